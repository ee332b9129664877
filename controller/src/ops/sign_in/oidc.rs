//! Sign-in through an OpenID Connect provider: the authorization code flow with PKCE (S256),
//! `state` and `nonce`, by the `openidconnect` crate over our own HTTP client (no redirects
//! followed, the CA of `ca_file` or the public roots, bodies bounded).
//!
//! [`Provider::start`] makes a flow: a random `state` (the key of the flow kept here), a nonce,
//! a PKCE verifier, and a secret for the browser's cookie. [`Provider::finish`] takes the flow
//! out by its `state` (once: a replayed callback finds nothing), checks the cookie's secret —
//! a callback carried to someone else's browser (login CSRF) has not got it — trades the code
//! with the verifier, and checks the ID token (signature by the provider's keys, issuer,
//! audience, expiry, nonce). Name and groups come from its claims, else from the userinfo
//! endpoint, whose `sub` must be the token's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde_json::{Map, Value};

use super::Account;
use crate::error::{CtlError, Result};
use crate::ops::secrets::{random_hex, sha256_hex};
use crate::state::sign_in::OidcConfig;

/// How long a browser has between leaving for the provider and coming back.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// Flows kept at once (anyone may start one): the oldest go first.
const MAX_FLOWS: usize = 10_000;
/// The provider's configuration and keys are read again after this long.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// The largest answer read from the provider.
const BODY_LIMIT: usize = 1 << 20;

struct Flow {
    browser: String,
    verifier: String,
    nonce: String,
    started: Instant,
    metadata: Arc<CoreProviderMetadata>,
}

pub struct Provider {
    pub config: OidcConfig,
    secret: Option<String>,
    ca_pem: Option<String>,
    metadata: tokio::sync::Mutex<Option<(Instant, Arc<CoreProviderMetadata>)>>,
    flows: Mutex<HashMap<String, Flow>>,
}

/// Why a callback did not sign anyone in.
#[derive(Debug)]
pub enum Refused {
    /// The browser's fault or an attacker's: unknown or used `state`, another browser's
    /// callback, a token that does not check out. Counted as a failed sign-in.
    Flow(String),
    /// The provider's trouble (unreachable, an error answer).
    Provider(CtlError),
}

impl Provider {
    pub fn new(config: OidcConfig, home: &Path) -> Result<Provider> {
        let secret = config.secret(home)?;
        let ca_pem = config
            .ca_file
            .as_deref()
            .map(|p| crate::state::home::read_in_home(home, p, "[sign_in.oidc] ca_file"))
            .transpose()?;
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| CtlError::bad(format!("[sign_in.oidc] issuer '{}': {e}", config.issuer)))?;
        Ok(Provider { config, secret, ca_pem, metadata: tokio::sync::Mutex::default(), flows: Mutex::default() })
    }

    /// The provider's discovery document and keys, read at most every [`METADATA_TTL`].
    async fn metadata(&self) -> Result<Arc<CoreProviderMetadata>> {
        let mut cached = self.metadata.lock().await;
        if let Some((at, m)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| CtlError::bad(e.to_string()))?;
        let client = requester(self.ca_pem.clone(), self.config.insecure);
        let m = CoreProviderMetadata::discover_async(issuer, &client).await.map_err(|e| {
            CtlError::failed(format!("cannot read the OpenID provider {}: {}", self.config.issuer, chain(&e)))
                .fix("check [sign_in.oidc] issuer (and ca_file), and that the provider is up")
        })?;
        let m = Arc::new(m);
        *cached = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    fn client(&self, metadata: &CoreProviderMetadata, redirect: &str) -> Result<ClientOf> {
        let redirect = RedirectUrl::new(redirect.to_owned())
            .map_err(|e| CtlError::bad(format!("the sign-in callback '{redirect}': {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// A new flow: the provider's URL to send the browser to, and the secret for its cookie.
    pub async fn start(&self, redirect: &str) -> Result<(String, String)> {
        let metadata = self.metadata().await?;
        let client = self.client(&metadata, redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let browser = random_hex();
        let flow = Flow {
            browser: sha256_hex(&browser),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            started: Instant::now(),
            metadata,
        };
        let mut flows = self.flows.lock().expect("oidc flows");
        flows.retain(|_, f| f.started.elapsed() < FLOW_TTL);
        if flows.len() >= MAX_FLOWS
            && let Some(oldest) = flows.iter().min_by_key(|(_, f)| f.started).map(|(k, _)| k.clone())
        {
            flows.remove(&oldest);
        }
        flows.insert(state.secret().clone(), flow);
        Ok((url.to_string(), browser))
    }

    /// The account a callback proves, for the browser holding `browser` (its cookie).
    pub async fn finish(
        &self,
        redirect: &str,
        state: &str,
        code: &str,
        browser: Option<&str>,
    ) -> std::result::Result<Account, Refused> {
        let flow = self.flows.lock().expect("oidc flows").remove(state);
        let flow = flow
            .filter(|f| f.started.elapsed() < FLOW_TTL)
            .ok_or_else(|| Refused::Flow("unknown, used or expired sign-in state".into()))?;
        if browser.map(sha256_hex).as_deref() != Some(flow.browser.as_str()) {
            return Err(Refused::Flow("the sign-in was started in another browser".into()));
        }
        let client = self.client(&flow.metadata, redirect).map_err(Refused::Provider)?;
        let http_client = requester(self.ca_pem.clone(), self.config.insecure);
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| {
                Refused::Provider(CtlError::failed(format!("the OpenID provider has no token endpoint: {e}")))
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.verifier))
            .request_async(&http_client)
            .await
            .map_err(|e| Refused::Flow(format!("the provider did not take the code: {}", chain(&e))))?;
        let id_token = token.id_token().ok_or_else(|| Refused::Flow("the provider sent no ID token".into()))?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(flow.nonce))
            .map_err(|e| Refused::Flow(format!("the ID token does not check out: {e}")))?;
        let sub = claims.subject().as_str().to_owned();
        // The token's signature was checked over exactly these bytes: its other claims are the
        // provider's word too.
        let mut all = payload(&id_token.to_string()).unwrap_or_default();
        let wanted = [&self.config.username_claim, &self.config.groups_claim];
        if wanted.iter().any(|c| !all.contains_key(c.as_str()))
            && let Some(endpoint) = flow.metadata.userinfo_endpoint()
        {
            let info = userinfo(
                self.ca_pem.as_deref(),
                self.config.insecure,
                endpoint.as_str(),
                token.access_token().secret(),
            )
            .await
            .map_err(Refused::Provider)?;
            if info.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
                return Err(Refused::Flow("the userinfo answer is another subject's".into()));
            }
            for (k, v) in info {
                all.entry(k).or_insert(v);
            }
        }
        let name = all
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Refused::Provider(
                    CtlError::failed(format!("the provider sent no '{}' claim", self.config.username_claim))
                        .fix("set [sign_in.oidc] username_claim to a claim it sends (and scopes to ask for it)"),
                )
            })?
            .to_owned();
        let groups = match all.get(&self.config.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Account { via: "oidc", subject: format!("{} {sub}", self.config.issuer), name, groups })
    }
}

type ClientOf = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The claims of a compact JWS (`header.payload.signature`), unverified: only for a token
/// whose signature was checked.
fn payload(jws: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let part = jws.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn userinfo(ca: Option<&str>, plain_ok: bool, endpoint: &str, access_token: &str) -> Result<Map<String, Value>> {
    let request = hyper::Request::get(endpoint)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {access_token}"))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| CtlError::failed(format!("userinfo {endpoint}: {e}")))?;
    let response = http(ca, plain_ok, request).await?;
    if !response.status().is_success() {
        return Err(CtlError::failed(format!("userinfo {endpoint} answered {}", response.status())));
    }
    serde_json::from_slice(response.body())
        .map_err(|e| CtlError::failed(format!("userinfo {endpoint}: not a JSON object: {e}")))
}

/// The HTTP client `openidconnect` calls: each request owns what it needs (a future that
/// borrows would not be `Send` for every lifetime, as axum's handlers must be).
fn requester(
    ca: Option<String>,
    plain_ok: bool,
) -> impl Fn(openidconnect::HttpRequest) -> std::pin::Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse>> + Send>>
{
    move |request| {
        let ca = ca.clone();
        Box::pin(async move { http(ca.as_deref(), plain_ok, request).await })
    }
}

/// One request for `openidconnect`, by our hyper client: no redirect is followed, and no
/// plain `http://` (a discovery document naming an http:// token endpoint would have the
/// client secret and the code sent in clear) unless the issuer is allowed to be.
async fn http(
    ca: Option<&str>,
    plain_ok: bool,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse> {
    use crate::http_client::{Target, Trust};
    use http_body_util::{BodyExt, Full, Limited};
    let url = request.uri().to_string();
    if !plain_ok && !url.starts_with("https://") {
        return Err(CtlError::failed(format!("the OpenID provider names {url}, which is not https://"))
            .fix("the provider's endpoints must be https:// ([sign_in.oidc] insecure = true allows http://, for a test provider only)"));
    }
    let trust = if url.starts_with("https://") && ca.is_some() { Trust::Ca(ca) } else { Trust::Public };
    let (target, path) = Target::from_url(&url, trust)?;
    let authority = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let (parts, body) = request.into_parts();
    let mut out = hyper::Request::builder().method(parts.method).uri(if path.is_empty() { "/".into() } else { path });
    for (k, v) in &parts.headers {
        out = out.header(k, v);
    }
    let out = out
        .header(hyper::header::HOST, authority)
        .body(Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| CtlError::failed(format!("{url}: {e}")))?;
    let response = tokio::time::timeout(Duration::from_secs(10), crate::http_client::send(&target, out))
        .await
        .map_err(|_| CtlError::failed(format!("{url}: no answer within 10 s")))??;
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(10), Limited::new(body, BODY_LIMIT).collect())
        .await
        .map_err(|_| CtlError::failed(format!("{url}: the answer did not end within 10 s")))?
        .map_err(|e| CtlError::failed(format!("{url}: {e}")))?
        .to_bytes();
    let mut answer = hyper::Response::builder().status(parts.status);
    for (k, v) in &parts.headers {
        answer = answer.header(k, v);
    }
    answer.body(bytes.to_vec()).map_err(|e| CtlError::failed(format!("{url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_endpoint_of_an_https_provider_is_refused_before_anything_is_sent() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let request =
            || hyper::Request::post("http://127.0.0.1:9/token").body(b"code=x&client_secret=s".to_vec()).unwrap();
        let refused = runtime.block_on(http(None, false, request())).unwrap_err().to_string();
        assert!(refused.contains("http://127.0.0.1:9/token, which is not https://"), "{refused}");
        // Allowed for a test provider: then it is sent (and port 9 refuses the connection).
        let sent = runtime.block_on(http(None, true, request())).unwrap_err().to_string();
        assert!(!sent.contains("not https://"), "{sent}");
    }

    #[test]
    fn the_payload_of_a_compact_token_is_read() {
        use base64::Engine;
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"groups":["ops"]}"#);
        let claims = payload(&format!("e30.{body}.c2ln")).unwrap();
        assert_eq!(claims["groups"], serde_json::json!(["ops"]));
        assert!(payload("not-a-token").is_none());
    }
}
