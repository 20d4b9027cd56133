//! The grammar of the command line (clap): every command and its arguments.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{bench, demo};

/// finworker: background jobs for SEPA direct-debit collection.
#[derive(Debug, Parser)]
#[command(name = "finworker", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: workers and the HTTP receiver.
    Run(RunArgs),
    /// Apply database migrations (direct connection, not PgBouncer).
    Migrate,
    /// Enqueue one job: `finworker enqueue noop '{}'` or `... noop @payload.json`.
    Enqueue(EnqueueArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and repair jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Depth of every queue (waiting, scheduled, in flight, failed, oldest waiting, paused);
    /// `queues pause|resume <queue>`.
    Queues {
        /// pause or resume a queue.
        #[command(subcommand)]
        action: Option<QueuesCommand>,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the demo pipeline end to end and print what happened.
    Demo(demo::DemoArgs),
    /// Store a local debtor file, enqueue its upload job and follow it to the end.
    Upload(UploadArgs),
    /// Inspect uploads.
    #[command(subcommand)]
    Uploads(UploadsCommand),
    /// Generate test data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Serve the sandbox provider (simulated VOP/BAV API) until Ctrl-C.
    Sandbox(SandboxArgs),
    /// Reports: create, show, and print signed download links.
    #[command(subcommand)]
    Reports(ReportsCommand),
    /// Gateway merchant accounts (configured in [gateway.accounts.<name>]).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Billing runs: start, list, show, pause, resume, cancel.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// The blacklist: IBANs, names, e-mails and BICs that are never debited.
    #[command(subcommand)]
    Blacklist(BlacklistCommand),
    /// Reconcile open attempts (pending, pending_async, unknown) whose backoff is due, now.
    Reconcile {
        /// Only this billing run's attempts.
        #[arg(long)]
        run: Option<uuid::Uuid>,
    },
    /// Ledger sync by date and the chargeback / retrieval-request sweeps.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Stored webhook deliveries: list, replay.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Circuit breakers, rate limits and chargeback-guard holds of every provider account, as
    /// all processes see them.
    Guards,
    /// Run one retention pass now (what the `retention` job does on `retention.schedule`):
    /// old job_runs, report files, staged chunks and delivered webhooks.
    Prune,
    /// Internal: read a spreadsheet from stdin under memory and CPU limits and write its rows
    /// as JSON lines (the upload job runs it; see src/jobs/upload/isolated.rs).
    #[command(hide = true)]
    SheetReader(crate::jobs::upload::isolated::ReaderArgs),
    /// Regenerate the producer contract in jobs/ from the payload types.
    Schemas {
        /// Folder to write into.
        #[arg(long, default_value = "jobs")]
        dir: PathBuf,
    },
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not serve HTTP.
    #[arg(long)]
    pub no_http: bool,
    /// Do not run workers (HTTP only).
    #[arg(long)]
    pub no_workers: bool,
    /// Only these queues (comma-separated job types).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
}

/// `enqueue` arguments.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job type.
    pub job_type: String,
    /// JSON payload, or @path to a file holding it.
    pub payload: String,
    /// Idempotency key: a repeat within the retention window returns the first job's id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Run no earlier than this from now (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
}

/// `upload` arguments.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The CSV / XLSX / XLS / ODS file.
    pub file: PathBuf,
    /// File name to record (defaults to the file's own).
    #[arg(long)]
    pub name: Option<String>,
    /// Sheet of a workbook (defaults to the first).
    #[arg(long)]
    pub sheet: Option<String>,
    /// Import the file even if an earlier upload had exactly the same content (refused
    /// otherwise, naming that upload).
    #[arg(long)]
    pub allow_same_file: bool,
    /// Print the upload id and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the final record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `uploads` subcommands.
#[derive(Debug, Subcommand)]
pub enum UploadsCommand {
    /// The latest uploads, newest first, with status and progress.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Status, progress (chunks, rows/s, ETA), totals and the first rejected rows.
    Show {
        /// Upload id.
        id: uuid::Uuid,
        /// Rejected rows to list.
        #[arg(long, default_value_t = 20)]
        rejects: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Adds the IBAN keys of completed uploads not yet in the linking filter (workers do it
    /// after each upload; this is for debtors stored otherwise, e.g. restored or bulk-loaded).
    FilterKeys,
}

/// `sandbox` flags: the starting knobs (PUT /_sandbox/config changes them later).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SandboxArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub bind: String,
    /// Added to every answer.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of calls failing (0..1), spread evenly.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// How injected failures look: 503 or timeout.
    #[arg(long, default_value = "503")]
    pub error_mode: String,
    /// Requests/s accepted from all clients together (0 = unlimited); more get 429.
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// Bearer key required from clients.
    #[arg(long, env = "FINWORKER_SANDBOX_API_KEY")]
    pub api_key: Option<String>,
    /// Genesis: the merchant password required (Basic auth); unset: any credentials.
    #[arg(
        long,
        env = "FINWORKER_SANDBOX_GENESIS_PASSWORD",
        hide_env_values = true
    )]
    pub genesis_password: Option<String>,
    /// Genesis: a repeated transaction_id is refused (error 450) or accepted as a second debit.
    #[arg(long, default_value = "refuse", value_parser = ["refuse", "accept"])]
    pub genesis_duplicates: String,
    /// Instead of serving: tell a running sandbox that something happened to a transaction.
    #[command(subcommand)]
    pub event: Option<SandboxEvent>,
}

/// `sandbox chargeback|retrieval|status`: raise an event at a running sandbox gateway, which
/// notifies the debit's notification_url (signed, retried until acknowledged).
#[derive(Debug, Subcommand)]
pub enum SandboxEvent {
    /// The debtor's bank returns the debit (the transaction becomes chargebacked).
    Chargeback(SandboxEventArgs),
    /// The debtor's bank asks for the mandate.
    Retrieval(SandboxEventArgs),
    /// The transaction's status changes (`--status`), e.g. an injected mismatch.
    Status(SandboxEventArgs),
}

/// Arguments of a sandbox event.
#[derive(Debug, Args)]
pub struct SandboxEventArgs {
    /// Our transaction_id of the debit (or its gateway unique_id with --unique-id).
    pub transaction_id: String,
    /// The argument is the gateway's unique_id.
    #[arg(long)]
    pub unique_id: bool,
    /// Reason code (AC04, AM04, MD01 …).
    #[arg(long)]
    pub reason: Option<String>,
    /// New status (status events).
    #[arg(long)]
    pub status: Option<String>,
    /// Change the gateway's books without a notification (found by reconcile and the sweeps).
    #[arg(long)]
    pub silent: bool,
    /// The running sandbox.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9300",
        env = "FINWORKER_SANDBOX_URL"
    )]
    pub sandbox: String,
}

/// `reports` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportsCommand {
    /// Enqueue a VOP report of an upload (or a date range), wait for it, print its link.
    Create {
        /// The upload.
        #[arg(long)]
        upload: Option<uuid::Uuid>,
        /// First check date (YYYY-MM-DD).
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last check date (inclusive).
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// csv or xlsx.
        #[arg(long, default_value = "xlsx")]
        format: String,
    },
    /// A report's status.
    Show {
        /// Report id.
        id: uuid::Uuid,
    },
    /// A billing run's report: every attempt with outcome, amount, codes; wait, print its link.
    Billing {
        /// The run.
        #[arg(long)]
        run: uuid::Uuid,
        /// csv or xlsx.
        #[arg(long, default_value = "xlsx")]
        format: String,
    },
    /// Chargebacks and retrieval requests recorded within a period; wait, print its link.
    Returns {
        /// First day (UTC).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last day (inclusive).
        #[arg(long)]
        to: chrono::NaiveDate,
        /// One gateway account (default all).
        #[arg(long)]
        account: Option<String>,
        /// csv or xlsx.
        #[arg(long, default_value = "xlsx")]
        format: String,
    },
    /// Debtors worth billing again (first debit approved, never charged back, quiet for
    /// --quiet-days, on no blacklist; one row per IBAN); wait, print its link.
    CleanDebtors {
        /// No debit within this many days.
        #[arg(long, default_value_t = 30)]
        quiet_days: u32,
        /// At most this many rows, oldest first debit first.
        #[arg(long, default_value_t = 100_000)]
        limit: i64,
        /// Only debtors with at least two approved debits.
        #[arg(long)]
        strict: bool,
        /// Only debtors first debited through this gateway account.
        #[arg(long)]
        account: Option<String>,
        /// Whole IBANs instead of masked ones (the list is for billing them; logged).
        #[arg(long)]
        full_iban: bool,
        /// csv or xlsx.
        #[arg(long, default_value = "xlsx")]
        format: String,
    },
    /// The latest reports, newest first, with a fresh link for each ready one.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Print a signed download link (valid for reports.link_ttl, or --ttl).
    Link {
        /// Report id.
        id: uuid::Uuid,
        /// How long the link works.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
}

/// `gen` subcommands.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// A debtor file (CSV or XLSX) with duplicates and malformed rows; prints its summary.
    Debtors(crate::testdata::DebtorArgs),
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and warnings.
    Check,
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Everything known about one job: its state in Redis, its runs, its dead-letter entry.
    Show {
        /// Job id.
        id: String,
    },
    /// List dead-lettered jobs.
    Failed {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put dead-lettered jobs back in their queue with fresh attempts.
    Retry {
        /// Job id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead job of --queue.
        #[arg(long, requires = "queue")]
        all: bool,
        /// Queue for --all.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete dead-lettered jobs.
    Purge {
        /// Purge the dead-letter store (the only store purged; required for clarity).
        #[arg(long, required = true)]
        failed: bool,
        /// Only jobs that failed longer ago than this (e.g. 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Enqueue and process no-op jobs through the real Redis; prints rates beside redis-benchmark.
    Queue(bench::QueueBenchArgs),
    /// The same jobs run by 1, 2, 4… worker processes sharing one Redis and one Postgres.
    Scale(bench::ScaleBenchArgs),
    /// Read every cell of an XLSX with calamine alone (the reference for upload figures).
    XlsxRead {
        /// The workbook.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}

/// `accounts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Every account: gateway, endpoint, currency, rate limit, monthly cap and what this month
    /// has committed (the password is shown only as the variable it is read from).
    List {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Release an account held by the chargeback-rate guard and resume the runs it paused.
    Release {
        /// The account.
        name: String,
    },
}

/// `billing` subcommands.
#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Start a run: bill an upload's debtors through one account.
    Start {
        /// The upload (imported and validated).
        #[arg(long)]
        upload: uuid::Uuid,
        /// The gateway account.
        #[arg(long)]
        account: String,
        /// Billing model of the run.
        #[arg(long, default_value = "legacy")]
        model: String,
        /// Report what would be billed and why the rest is excluded; debit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Bill IBANs that had a chargeback too.
        #[arg(long)]
        skip_chargeback_check: bool,
        /// Most the run may debit in total, minor units.
        #[arg(long)]
        cap_minor: Option<i64>,
        /// Return once enqueued instead of following the run to its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Recent runs.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// A run: status, counts and amounts by outcome and by exclusion reason.
    Show {
        /// The run.
        run: uuid::Uuid,
    },
    /// Hold a run's claims (debits in flight finish).
    Pause {
        /// The run.
        run: uuid::Uuid,
    },
    /// Let a paused run go on.
    Resume {
        /// The run.
        run: uuid::Uuid,
    },
    /// End a run for good: debtors not yet claimed are excluded as `cancelled`.
    Cancel {
        /// The run.
        run: uuid::Uuid,
    },
    /// Void one debit at the gateway (within billing.void_window). The gateway is asked about
    /// the debit first; nothing is ever voided locally.
    Void {
        /// The debit's transaction_id (as in `billing show`, exports and the gateway).
        transaction_id: String,
    },
}

/// `blacklist` subcommands.
#[derive(Debug, Subcommand)]
pub enum BlacklistCommand {
    /// Add an entry (exactly one of --iban, --name, --email, --bic).
    Add {
        /// An IBAN (stored as its keyed hash only).
        #[arg(long)]
        iban: Option<String>,
        /// A debtor name.
        #[arg(long)]
        name: Option<String>,
        /// An e-mail address.
        #[arg(long)]
        email: Option<String>,
        /// A BIC.
        #[arg(long)]
        bic: Option<String>,
        /// Match every value starting with this one (names, e-mails, BICs).
        #[arg(long)]
        prefix: bool,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Every entry (IBANs appear as hashes).
    List,
}

/// `ledger` subcommands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Compare the gateway's transactions of a date window with ours, correct statuses through
    /// the state machine, and report every difference (printed, and as a download link).
    Sync {
        /// First day (UTC, YYYY-MM-DD).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last day (inclusive).
        #[arg(long)]
        to: chrono::NaiveDate,
        /// One account (default: every configured account).
        #[arg(long)]
        account: Option<String>,
        /// Report format: csv or xlsx.
        #[arg(long, default_value = "xlsx")]
        format: String,
    },
    /// Read chargebacks and retrieval requests by import date and store what is new.
    Sweep {
        /// First import date (UTC).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last import date (inclusive; default: the same day).
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// One account (default: every configured account).
        #[arg(long)]
        account: Option<String>,
    },
    /// Recent syncs and sweeps with their figures.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Apply the BIC auto-blacklist rule now and print every decision.
    BicRule,
}

/// `webhooks` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Stored deliveries, oldest first.
    List {
        /// Only this state or verdict: queued, processed, unmatched, failed, ignored,
        /// accepted, rejected, malformed.
        #[arg(long)]
        status: Option<String>,
        /// Received at or after (RFC 3339, or a duration ago such as 2h).
        #[arg(long)]
        since: Option<String>,
        /// How many at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Process deliveries again (after a fix), with the same idempotency: by id, or every one
    /// since a time (with --status, default failed).
    Replay {
        /// Delivery ids.
        ids: Vec<i64>,
        /// Every delivery received at or after (RFC 3339, or a duration ago such as 2h).
        #[arg(long)]
        since: Option<String>,
        /// With --since: only this state or verdict (default failed).
        #[arg(long)]
        status: Option<String>,
    },
}

/// `queues` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// No process fetches this queue's jobs until it is resumed (survives restarts); jobs
    /// already running finish.
    Pause {
        /// The queue (a job type).
        queue: String,
        /// Why (shown by `finworker queues`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Fetch this queue's jobs again.
    Resume {
        /// The queue.
        queue: String,
    },
}
