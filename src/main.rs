use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    finworker::cli::run()
        .await
        .map_or_else(finworker::telemetry::fatal, |()| ExitCode::SUCCESS)
}
