//! What an S3-compatible server says when it refuses a request: the `<Code>` and `<Message>` of
//! its XML error body (read by the controller for its uploads and by the agent for its fetches).

/// `(code, message)` of an S3 error body, each if present; only the first 4 KiB are read.
pub fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find("</")? + start;
        Some(text[start..end].to_owned())
    };
    (tag("Code"), tag("Message"))
}

/// ` (Code: Message)`, ` (Code)`, or nothing: to follow an HTTP status in a message.
pub fn said(body: &[u8]) -> String {
    match error_fields(body) {
        (Some(code), Some(message)) => format!(" ({code}: {message})"),
        (Some(code), None) => format!(" ({code})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_gives_its_code_and_message() {
        let body =
            b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(said(body), " (AccessDenied: Request has expired)");
        assert_eq!(error_fields(b"<Error><Code>NoSuchBucket</Code></Error>").0.as_deref(), Some("NoSuchBucket"));
        assert_eq!(said(b"not xml"), "");
    }
}
