//! Gateway module `genesis`: the emerchantpay Genesis XML API (payments.md §1), the subset
//! billing and the lifecycle need: `sdd_sale`, single reconcile, `void`, reconcile by date,
//! chargebacks and retrieval requests by date.
//!
//! POST of a `text/xml` body with HTTP Basic auth to `<endpoint>/process/<terminal_token>/`
//! (debits, voids), `<endpoint>/reconcile/<terminal_token>/`,
//! `<endpoint>/reconcile/by_date/<terminal_token>/`, `<endpoint>/chargebacks/by_date` and
//! `<endpoint>/retrieval_requests/by_date`. No retries here.

use futures::{FutureExt, future::BoxFuture};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use chrono::NaiveDate;

use super::{Answer, CallError, Debit, Gateway, Lookup, Page, ReturnKind, ReturnRecord, TxKey};
use crate::config::{GatewayAccountSettings, GatewaySettings};

/// Answers above this size are not read (a gateway answer is a few hundred bytes; a page of
/// 999 transactions by date about 1 MB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Codes of a reconcile that found no transaction (payments.md §1.6: 410 reference not found,
/// 460 referenced transaction not found).
const NOT_FOUND_CODES: [i32; 2] = [410, 460];

/// reqwest client of one Genesis terminal.
pub struct GenesisClient {
    http: reqwest::Client,
    process_url: String,
    reconcile_url: String,
    by_date_url: String,
    base: String,
    username: String,
    password: Option<SecretString>,
    notification_url: Option<String>,
    descriptor: Option<(String, String)>,
}

impl std::fmt::Debug for GenesisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The terminal token is part of the URLs: not printed.
        f.debug_struct("GenesisClient")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
#[serde(rename = "payment_transaction")]
struct SaleXml<'a> {
    transaction_type: &'static str,
    transaction_id: &'a str,
    usage: &'a str,
    amount: i64,
    currency: &'a str,
    iban: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mandate_reference: Option<&'a str>,
    billing_address: AddressXml<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dynamic_descriptor_params: Option<DescriptorXml<'a>>,
}

#[derive(Serialize)]
struct AddressXml<'a> {
    first_name: &'a str,
    last_name: &'a str,
    country: &'a str,
}

#[derive(Serialize)]
struct DescriptorXml<'a> {
    merchant_name: &'a str,
    merchant_city: &'a str,
}

#[derive(Serialize)]
#[serde(rename = "payment_transaction")]
struct VoidXml<'a> {
    transaction_type: &'static str,
    transaction_id: &'a str,
    usage: &'a str,
    reference_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename = "reconcile")]
struct ReconcileXml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unique_id: Option<&'a str>,
}

/// `payment_response`, every field optional (an error answer may carry only four).
#[derive(Debug, Deserialize, Default)]
struct ResponseXml {
    status: Option<String>,
    unique_id: Option<String>,
    transaction_id: Option<String>,
    code: Option<String>,
    message: Option<String>,
    technical_message: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
    transaction_type: Option<String>,
    timestamp: Option<String>,
}

#[derive(Serialize)]
#[serde(rename = "reconcile")]
struct ByDateXml {
    start_date: String,
    end_date: String,
    page: u32,
    records_per_page: u32,
}

#[derive(Serialize)]
struct ReturnsByDateXml {
    import_date: String,
    page: u32,
    per_page: u32,
}

/// A by-date answer: paging attributes and records; or a bare error answer.
#[derive(Debug, Deserialize)]
struct PageXml<T> {
    #[serde(rename = "@page", default)]
    page: Option<u32>,
    #[serde(rename = "@pages_count", default)]
    pages_count: Option<u32>,
    #[serde(rename = "@total_count", default)]
    total_count: Option<u64>,
    #[serde(
        default = "Vec::new",
        alias = "payment_response",
        alias = "chargeback_response",
        alias = "retrieval_request_response"
    )]
    items: Vec<T>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    technical_message: Option<String>,
}

/// One record of chargebacks / retrieval requests by date.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ReturnXml {
    r#type: Option<String>,
    arn: Option<String>,
    unique_id: Option<String>,
    original_transaction_unique_id: Option<String>,
    transaction_id: Option<String>,
    post_date: Option<String>,
    import_date: Option<String>,
    reason_code: Option<String>,
    reason_description: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
}

/// A `YYYY-MM-DD` date, with any time part after it ignored (Genesis writes both).
pub fn parse_date(v: Option<&str>) -> Option<NaiveDate> {
    let v = v?.trim();
    NaiveDate::parse_from_str(v.get(..10).unwrap_or(v), "%Y-%m-%d").ok()
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Reads a by-date answer; an error answer is a refusal.
fn parse_page<T, U>(xml: &str, item: impl Fn(T) -> Result<U, String>) -> Result<Page<U>, CallError>
where
    T: serde::de::DeserializeOwned,
{
    let p: PageXml<T> = quick_xml::de::from_str(xml)
        .map_err(|e| CallError::Unknown(format!("unreadable page: {e}")))?;
    if p.status.as_deref() == Some("error") {
        return Err(CallError::Refused(format!(
            "code {}: {}",
            p.code.unwrap_or_default(),
            p.technical_message.unwrap_or_default()
        )));
    }
    let items = p
        .items
        .into_iter()
        .map(item)
        .collect::<Result<Vec<U>, String>>()
        .map_err(|e| CallError::Unknown(format!("unreadable record: {e}")))?;
    Ok(Page {
        page: p.page.unwrap_or(1),
        pages_count: p.pages_count.unwrap_or(u32::from(!items.is_empty())),
        total_count: p.total_count.unwrap_or(items.len() as u64),
        items,
    })
}

/// Reads a page of reconcile by date.
pub fn parse_transactions_page(xml: &str) -> Result<Page<Answer>, CallError> {
    parse_page(xml, answer_of)
}

/// Reads a page of chargebacks or retrieval requests by date.
pub fn parse_returns_page(xml: &str) -> Result<Page<ReturnRecord>, CallError> {
    parse_page(xml, |r: ReturnXml| {
        let amount_minor = nonempty(r.amount)
            .map(|a| {
                a.parse::<i64>()
                    .map_err(|_| format!("amount `{a}` is not an integer"))
            })
            .transpose()?;
        Ok(ReturnRecord {
            original_unique_id: nonempty(r.original_transaction_unique_id),
            unique_id: nonempty(r.unique_id),
            transaction_id: nonempty(r.transaction_id),
            arn: nonempty(r.arn),
            r#type: nonempty(r.r#type),
            reason_code: nonempty(r.reason_code).map(|c| c.to_ascii_uppercase()),
            reason_description: nonempty(r.reason_description),
            amount_minor,
            currency: nonempty(r.currency),
            post_date: parse_date(r.post_date.as_deref()),
            import_date: parse_date(r.import_date.as_deref()),
        })
    })
}

/// Serialises a request body with its XML declaration.
pub fn to_xml<T: Serialize>(body: &T) -> Result<String, CallError> {
    let inner = quick_xml::se::to_string(body)
        .map_err(|e| CallError::Refused(format!("cannot build the request: {e}")))?;
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{inner}"
    ))
}

/// Reads a `payment_response` (or any root holding its fields).
pub fn parse_answer(xml: &str) -> Result<Answer, String> {
    answer_of(quick_xml::de::from_str(xml).map_err(|e| e.to_string())?)
}

fn answer_of(r: ResponseXml) -> Result<Answer, String> {
    let status = r.status.ok_or("the answer has no status")?;
    let num = |v: &Option<String>, what: &str| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| format!("{what} `{s}` is not an integer"))
            })
            .transpose()
    };
    Ok(Answer {
        status: status.trim().to_string(),
        unique_id: r.unique_id.filter(|s| !s.is_empty()),
        transaction_id: r.transaction_id.filter(|s| !s.is_empty()),
        code: num(&r.code, "code")?.and_then(|c| i32::try_from(c).ok()),
        message: r.message,
        technical_message: r.technical_message,
        amount_minor: num(&r.amount, "amount")?,
        currency: nonempty(r.currency),
        transaction_type: nonempty(r.transaction_type),
        timestamp: nonempty(r.timestamp),
    })
}

/// The notification URL sent with account `name`'s debits: `{account}` in the setting is
/// replaced by the account's name, so one setting serves the receiver route of every account
/// (`…/api/webhooks/emp/{account}`). Empty: none.
fn notification_url(setting: &str, name: &str) -> Option<String> {
    (!setting.is_empty()).then(|| setting.replace("{account}", name))
}

impl GenesisClient {
    /// A client of account `name`.
    pub fn new(
        name: &str,
        a: &GatewayAccountSettings,
        s: &GatewaySettings,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(s.request_timeout)
            .connect_timeout(s.connect_timeout)
            .user_agent(format!(
                "finworker/{} pid/{} account/{name}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ))
            .pool_max_idle_per_host(256)
            .build()?;
        let base = a.endpoint.trim_end_matches('/');
        let descriptor = (!s.descriptor_name.is_empty()).then(|| {
            (
                super::sepa_text(&s.descriptor_name, 25),
                super::sepa_text(&s.descriptor_city, 13),
            )
        });
        Ok(Self {
            http,
            process_url: format!("{base}/process/{}/", a.terminal_token),
            reconcile_url: format!("{base}/reconcile/{}/", a.terminal_token),
            by_date_url: format!("{base}/reconcile/by_date/{}/", a.terminal_token),
            base: base.to_string(),
            username: a.username.clone(),
            password: a.password.clone(),
            notification_url: notification_url(&s.notification_url, name),
            descriptor,
        })
    }

    async fn post(&self, url: &str, body: String) -> Result<Answer, CallError> {
        let text = self.post_text(url, body).await?;
        parse_answer(&text).map_err(|e| CallError::Unknown(format!("unreadable answer: {e}")))
    }

    async fn post_text(&self, url: &str, body: String) -> Result<String, CallError> {
        let resp = self
            .http
            .post(url)
            .basic_auth(
                &self.username,
                self.password.as_ref().map(|p| p.expose_secret()),
            )
            .header(reqwest::header::CONTENT_TYPE, "text/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    CallError::Unknown("no answer within gateway.request_timeout".into())
                } else {
                    CallError::Unknown(format!("transport: {e}"))
                }
            })?;
        let status = resp.status();
        let bytes = read_capped(resp).await?;
        let text = String::from_utf8_lossy(&bytes);
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            return Err(CallError::Unknown(format!(
                "HTTP {}: {}",
                status.as_u16(),
                snippet(&text)
            )));
        }
        if status.is_client_error() {
            return Err(CallError::Refused(format!(
                "HTTP {}: {}",
                status.as_u16(),
                snippet(&text)
            )));
        }
        Ok(text.into_owned())
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > MAX_ANSWER_BYTES {
                    return Err(CallError::Unknown("answer larger than 16 MiB".into()));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            // The connection dropped mid-answer: the request may have been processed.
            Err(e) => return Err(CallError::Unknown(format!("answer cut short: {e}"))),
        }
    }
}

fn snippet(s: &str) -> String {
    s.chars().take(200).collect()
}

impl Gateway for GenesisClient {
    fn name(&self) -> &'static str {
        "genesis"
    }

    fn sale<'a>(&'a self, d: &'a Debit) -> BoxFuture<'a, Result<Answer, CallError>> {
        async move {
            let body = to_xml(&SaleXml {
                transaction_type: "sdd_sale",
                transaction_id: &d.transaction_id,
                usage: &d.usage,
                amount: d.amount_minor,
                currency: &d.currency,
                iban: &d.iban,
                bic: d.bic.as_deref(),
                customer_email: d.email.as_deref(),
                mandate_reference: d.mandate_reference.as_deref(),
                billing_address: AddressXml {
                    first_name: &d.first_name,
                    last_name: &d.last_name,
                    country: &d.country,
                },
                notification_url: self.notification_url.as_deref(),
                dynamic_descriptor_params: self.descriptor.as_ref().map(|(n, c)| DescriptorXml {
                    merchant_name: n,
                    merchant_city: c,
                }),
            })?;
            self.post(&self.process_url, body).await
        }
        .boxed()
    }

    fn reconcile<'a>(&'a self, key: TxKey<'a>) -> BoxFuture<'a, Result<Lookup, CallError>> {
        async move {
            let body = to_xml(&match key {
                TxKey::TransactionId(t) => ReconcileXml {
                    transaction_id: Some(t),
                    unique_id: None,
                },
                TxKey::UniqueId(u) => ReconcileXml {
                    transaction_id: None,
                    unique_id: Some(u),
                },
            })?;
            let a = self.post(&self.reconcile_url, body).await?;
            if a.status == "error" && a.code.is_some_and(|c| NOT_FOUND_CODES.contains(&c)) {
                return Ok(Lookup::NotFound);
            }
            Ok(Lookup::Found(a))
        }
        .boxed()
    }

    fn void<'a>(
        &'a self,
        void_transaction_id: &'a str,
        unique_id: &'a str,
    ) -> BoxFuture<'a, Result<Answer, CallError>> {
        async move {
            let body = to_xml(&VoidXml {
                transaction_type: "void",
                transaction_id: void_transaction_id,
                usage: "void",
                reference_id: unique_id,
            })?;
            self.post(&self.process_url, body).await
        }
        .boxed()
    }

    fn transactions_by_date(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        page: u32,
        per_page: u32,
    ) -> BoxFuture<'_, Result<Page<Answer>, CallError>> {
        async move {
            let body = to_xml(&ByDateXml {
                start_date: from.to_string(),
                end_date: to.to_string(),
                page,
                records_per_page: per_page.clamp(1, 999),
            })?;
            parse_transactions_page(&self.post_text(&self.by_date_url, body).await?)
        }
        .boxed()
    }

    fn returns_by_date(
        &self,
        kind: ReturnKind,
        import_date: NaiveDate,
        page: u32,
        per_page: u32,
    ) -> BoxFuture<'_, Result<Page<ReturnRecord>, CallError>> {
        async move {
            let q = ReturnsByDateXml {
                import_date: import_date.to_string(),
                page,
                per_page,
            };
            let body = match kind {
                ReturnKind::Chargebacks => {
                    quick_xml::se::to_string_with_root("chargeback_request", &q)
                }
                ReturnKind::RetrievalRequests => {
                    quick_xml::se::to_string_with_root("retrieval_request_request", &q)
                }
            }
            .map_err(|e| CallError::Refused(format!("cannot build the request: {e}")))?;
            let url = format!("{}/{}/by_date", self.base, kind.as_str());
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}");
            parse_returns_page(&self.post_text(&url, body).await?)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_account_gets_its_own_notification_url() {
        let setting = "https://worker.example/api/webhooks/emp/{account}";
        assert_eq!(
            notification_url(setting, "main").as_deref(),
            Some("https://worker.example/api/webhooks/emp/main")
        );
        assert_eq!(
            notification_url(setting, "eu_2").as_deref(),
            Some("https://worker.example/api/webhooks/emp/eu_2")
        );
        assert_eq!(
            notification_url("https://fixed.example/hook", "main").as_deref(),
            Some("https://fixed.example/hook")
        );
        assert_eq!(notification_url("", "main"), None);
    }

    #[test]
    fn a_sale_is_the_documented_xml_with_minor_units_and_escaping() {
        let xml = to_xml(&SaleXml {
            transaction_type: "sdd_sale",
            transaction_id: "fw-1",
            usage: "Invoice <4711> & co",
            amount: 1999,
            currency: "EUR",
            iban: "DE89370400440532013000",
            bic: None,
            customer_email: None,
            mandate_reference: Some("M-1"),
            billing_address: AddressXml {
                first_name: "Erika",
                last_name: "Mustermann",
                country: "DE",
            },
            notification_url: None,
            dynamic_descriptor_params: None,
        })
        .unwrap();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<payment_transaction><transaction_type>sdd_sale</transaction_type><transaction_id>fw-1</transaction_id>"), "{xml}");
        assert!(
            xml.contains("<amount>1999</amount><currency>EUR</currency>"),
            "{xml}"
        );
        assert!(
            xml.contains("<usage>Invoice &lt;4711&gt; &amp; co</usage>"),
            "{xml}"
        );
        assert!(xml.contains("<billing_address><first_name>Erika</first_name><last_name>Mustermann</last_name><country>DE</country></billing_address>"), "{xml}");
        assert!(
            !xml.contains("<bic>"),
            "empty optional elements are left out: {xml}"
        );
    }

    #[test]
    fn answers_are_read_including_bare_error_answers() {
        let a = parse_answer(
            "<?xml version=\"1.0\"?><payment_response><transaction_type>sdd_sale</transaction_type>\
             <status>approved</status><unique_id>abc123</unique_id><transaction_id>fw-1</transaction_id>\
             <amount>1999</amount><currency>EUR</currency></payment_response>",
        )
        .unwrap();
        assert_eq!(a.status, "approved");
        assert_eq!(a.unique_id.as_deref(), Some("abc123"));
        assert_eq!(a.amount_minor, Some(1999));
        let e = parse_answer(
            "<payment_response><status>error</status><code>460</code><message>not found</message>\
             <technical_message>Transaction not found</technical_message></payment_response>",
        )
        .unwrap();
        assert_eq!((e.status.as_str(), e.code), ("error", Some(460)));
        assert!(parse_answer("<payment_response><code>1</code></payment_response>").is_err());
        let by_unique = to_xml(&ReconcileXml {
            transaction_id: None,
            unique_id: Some("44177a21"),
        })
        .unwrap();
        assert!(
            by_unique.ends_with("<reconcile><unique_id>44177a21</unique_id></reconcile>"),
            "{by_unique}"
        );
        assert!(parse_answer("not xml at all").is_err());
    }

    #[test]
    fn by_date_pages_are_read_with_their_paging_and_errors_are_refusals() {
        let p = parse_transactions_page(
            "<?xml version=\"1.0\"?><payment_responses page=\"2\" per_page=\"2\" total_count=\"3\" pages_count=\"2\">\
             <payment_response><transaction_type>sdd_sale</transaction_type><status>approved</status>\
             <unique_id>u1</unique_id><transaction_id>fw-1</transaction_id><amount>995</amount><currency>EUR</currency>\
             <timestamp>2026-11-30T10:00:00Z</timestamp></payment_response></payment_responses>",
        )
        .unwrap();
        assert_eq!((p.page, p.pages_count, p.total_count), (2, 2, 3));
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].amount_minor, Some(995));
        assert_eq!(p.items[0].transaction_type.as_deref(), Some("sdd_sale"));
        let two = parse_transactions_page(
            "<payment_responses page=\"1\" pages_count=\"1\" total_count=\"2\">\
             <payment_response><status>approved</status><unique_id>a</unique_id></payment_response>\
             <payment_response><status>chargebacked</status><unique_id>b</unique_id></payment_response></payment_responses>",
        )
        .unwrap();
        assert_eq!(two.items.len(), 2);
        let empty = parse_transactions_page(
            "<payment_responses page=\"1\" per_page=\"999\" total_count=\"0\" pages_count=\"0\"></payment_responses>",
        )
        .unwrap();
        assert!(empty.items.is_empty());
        let err = parse_transactions_page(
            "<payment_response><status>error</status><code>340</code><technical_message>start_date has an invalid format</technical_message></payment_response>",
        )
        .unwrap_err();
        assert!(
            matches!(err, CallError::Refused(ref m) if m.contains("340")),
            "{err}"
        );
        let r = parse_returns_page(
            "<chargeback_responses page=\"1\" pages_count=\"1\" total_count=\"1\"><chargeback_response>\
             <type>1st chargeback</type><arn>74</arn><post_date>2026-11-28</post_date><import_date>2026-11-29 00:00:00</import_date>\
             <reason_code>ac04</reason_code><amount>995</amount><currency>EUR</currency>\
             <original_transaction_unique_id>u1</original_transaction_unique_id></chargeback_response></chargeback_responses>",
        )
        .unwrap();
        assert_eq!(r.items[0].reason_code.as_deref(), Some("AC04"));
        assert_eq!(
            r.items[0].import_date,
            NaiveDate::from_ymd_opt(2026, 11, 29)
        );
        assert_eq!(r.items[0].original_unique_id.as_deref(), Some("u1"));
        assert_eq!(r.items[0].r#type.as_deref(), Some("1st chargeback"));
    }
}
