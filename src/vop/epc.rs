//! Provider module `epc`: the EPC-VOP-shaped JSON API documented in `docs/sandbox.md`
//! (`POST /vop/v1/payee-verifications`, `POST /bav/v1/account-verifications`).

use futures::{FutureExt, future::BoxFuture};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{AccountAnswer, BavResult, PayeeAnswer, Provider, ProviderError, Request, VopResult};
use crate::config::VopSettings;

/// reqwest client of the `epc` API.
#[derive(Debug)]
pub struct EpcClient {
    http: reqwest::Client,
    base: String,
    /// Never printed: SecretString's Debug is redacted.
    key: Option<secrecy::SecretString>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayeeBody {
    verification_id: Option<String>,
    result: String,
    matched_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountBody {
    verification_id: Option<String>,
    result: String,
}

impl EpcClient {
    /// A client for `vop.base_url`.
    pub fn new(s: &VopSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(s.request_timeout)
            .user_agent(format!(
                "finworker/{} pid/{}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            http,
            base: s.base_url.trim_end_matches('/').to_string(),
            key: s.api_key.clone(),
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ProviderError> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-Request-ID", uuid::Uuid::now_v7().to_string())
            .json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose_secret());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout
            } else {
                ProviderError::Transport(e.to_string())
            }
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            let body = read_capped(resp, MAX_ANSWER_BYTES).await?;
            return serde_json::from_slice::<T>(&body)
                .map_err(|e| ProviderError::Transport(format!("bad answer: {e}")));
        }
        // An error body is only shown to people: its first bytes, cut on a character boundary.
        let raw = read_capped(resp, 4096).await.unwrap_or_default();
        let body =
            crate::uploads::cut_at_char_boundary(&String::from_utf8_lossy(&raw), 200).to_string();
        Err(match status {
            429 => ProviderError::RateLimited,
            s if s >= 500 => ProviderError::Server { status: s, body },
            s => ProviderError::Refused { status: s, body },
        })
    }
}

/// Largest answer body read from the provider: its answers are a few hundred bytes, and a
/// misbehaving endpoint must not make a worker buffer without bound.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads at most `limit` bytes of a body; a longer success answer is an error, a longer
/// error body is cut.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let success = resp.status().is_success();
    let mut out = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout
            } else {
                ProviderError::Transport(format!("reading the answer: {e}"))
            }
        })?;
        let Some(chunk) = chunk else { break };
        let room = limit - out.len();
        if chunk.len() > room {
            if success {
                return Err(ProviderError::Transport(format!(
                    "answer larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk[..room]);
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn unknown(what: &str, v: &str) -> ProviderError {
    ProviderError::Transport(format!("unknown {what} result `{v}`"))
}

impl Provider for EpcClient {
    fn name(&self) -> &'static str {
        "epc"
    }

    fn verify_payee<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<PayeeAnswer, ProviderError>> {
        async move {
            let b: PayeeBody = self
                .post(
                    "/vop/v1/payee-verifications",
                    serde_json::json!({ "iban": req.iban, "name": req.name, "bic": req.bic }),
                )
                .await?;
            let result = match b.result.as_str() {
                "MTCH" => VopResult::Match,
                "CMTC" => VopResult::CloseMatch,
                "NMTC" => VopResult::NoMatch,
                "NOAP" => VopResult::NotPossible,
                other => return Err(unknown("VOP", other)),
            };
            Ok(PayeeAnswer {
                result,
                suggested_name: b.matched_name,
                reference: b.verification_id,
            })
        }
        .boxed()
    }

    fn verify_account<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<AccountAnswer, ProviderError>> {
        async move {
            let b: AccountBody = self
                .post(
                    "/bav/v1/account-verifications",
                    serde_json::json!({ "iban": req.iban, "bic": req.bic }),
                )
                .await?;
            let result = match b.result.as_str() {
                "VALID" => BavResult::Valid,
                "CLOSED" => BavResult::Closed,
                "NO_DIRECT_DEBIT" => BavResult::NoDirectDebit,
                "NOT_POSSIBLE" => BavResult::NotPossible,
                other => return Err(unknown("BAV", other)),
            };
            Ok(AccountAnswer {
                result,
                reference: b.verification_id,
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let mut s: crate::config::Settings =
            crate::config::Settings::load_from(std::path::Path::new("config"), &[]).unwrap();
        s.vop.api_key = Some(secrecy::SecretString::from("sk-live-123456"));
        let c = EpcClient::new(&s.vop).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("sk-live-123456"), "{text}");
    }
}
