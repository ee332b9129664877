//! English and Simplified Chinese for the pages: the `lang` cookie (the switch) wins, then
//! `Accept-Language` (any `zh` tag reads Chinese), then English.

use axum::http::{HeaderMap, header};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn of(headers: &HeaderMap) -> Lang {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == "lang")
            .map(|(_, v)| v.to_owned());
        match cookie.as_deref() {
            Some("zh") => return Lang::Zh,
            Some("en") => return Lang::En,
            _ => {}
        }
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        // The first language listed decides (browsers put the preferred one first).
        match accept.split(',').next().map(|l| l.trim().to_ascii_lowercase()) {
            Some(l) if l.starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The label `key` in this language.
    pub fn t(self, key: &str) -> &'static str {
        let (en, zh) = match key {
            "title" => ("Slipway", "Slipway 发布"),
            "dashboard" => ("Dashboard", "总览"),
            "login" => ("Log in", "登录"),
            "logout" => ("Log out", "退出"),
            "user" => ("User", "用户名"),
            "password" => ("Password", "密码"),
            "wrong" => ("Wrong user or password.", "用户名或密码错误。"),
            "project" => ("Project", "项目"),
            "release" => ("Release on the hosts", "主机上的版本"),
            "last_deploy" => ("Last deploy", "最近上线"),
            "last_ticket" => ("Last ticket", "最近上线单"),
            "running" => ("Deploying", "正在上线"),
            "no_hosts" => ("nothing deployed yet", "尚未上线"),
            "no_projects" => ("No project you may see yet.", "还没有您可以查看的项目。"),
            "hosts_on" => ("on", "台在"),
            "switch" => ("中文", "English"),
            "signed_in" => ("Signed in as", "当前用户"),
            "succeeded" => ("succeeded", "成功"),
            "failed" => ("failed", "失败"),
            "rolled_back" => ("rolled back", "已回滚"),
            "cancelled" => ("cancelled", "已取消"),
            "interrupted" => ("interrupted", "已中断"),
            "incomplete" => ("incomplete", "未完成"),
            "paused" => ("paused", "已暂停"),
            "planned" => ("planned", "计划"),
            "pending" => ("pending approval", "待审核"),
            "approved" => ("approved", "已审核"),
            "rejected" => ("rejected", "已驳回"),
            "deploying" => ("deploying", "上线中"),
            _ => ("?", "?"),
        };
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_then_the_first_accepted_language_decides() {
        assert_eq!(Lang::of(&headers(&[(header::ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.8")])), Lang::Zh);
        assert_eq!(Lang::of(&headers(&[(header::ACCEPT_LANGUAGE, "en-US,zh;q=0.5")])), Lang::En);
        assert_eq!(Lang::of(&headers(&[])), Lang::En);
        let both = headers(&[(header::ACCEPT_LANGUAGE, "zh-CN"), (header::COOKIE, "a=1; lang=en")]);
        assert_eq!(Lang::of(&both), Lang::En, "the switch wins");
        assert_eq!(Lang::Zh.t("login"), "登录");
    }
}
