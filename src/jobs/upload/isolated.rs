//! Spreadsheets are read in a child process with a memory and CPU limit.
//!
//! A spreadsheet carries counts the reading library trusts (a shared-strings table declaring
//! 10^13 entries, an XLS dimensions record, ODS repeat counts) and reserves memory from them:
//! in-process, one hostile file aborts the whole worker with every job it was running, and
//! each worker that picks the upload up next dies the same way. So the daemon re-executes
//! itself as `finworker sheet-reader` with the spooled file as its stdin, an address-space
//! limit (`upload.reader_memory`) and a CPU limit, and reads the rows back as length-prefixed
//! postcard frames (compact binary: the pipe costs little beside the read itself).
//! Whatever the file makes the reader do — abort on an allocation, panic, spin — only the
//! child dies, within the limits, and the upload fails with a sentence saying why.

use std::{
    fs::File,
    io::{BufReader, Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    sheet,
    source::{FileError, Format, SourceMeta, SourceRow},
    split::{RowSink, Stop},
};
use crate::uploads::ColumnAliases;

/// Largest frame the parent accepts: far above any row a limited reader can build.
const MAX_FRAME: usize = 256 << 20;

/// One frame of the child's answer.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one at a time, written and read straight away
enum Event {
    /// The header was mapped.
    Header(SourceMeta, Option<String>),
    /// A row and the bytes read so far.
    Row(SourceRow, u64),
    /// The file is bad: this message, for finance staff.
    Fail(String),
}

/// How the parent runs the reader.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The binary to run (`finworker` itself).
    pub exe: PathBuf,
    /// Address-space limit of the child, bytes.
    pub memory: u64,
    /// Wall-clock (and CPU) limit of the child.
    pub time: Duration,
    /// `upload.max_decompressed_bytes`.
    pub max_decompressed: u64,
}

/// Reads `file` in a child process, handing its rows to `sink`. Blocking: call it from a
/// blocking thread.
pub fn read(
    file: File,
    format: Format,
    sheet: Option<&str>,
    limits: &Limits,
    sink: &mut impl RowSink,
) -> Result<(), Stop> {
    let unreadable = |why: String| Stop::File(FileError::Unreadable(why));
    let mut cmd = Command::new(&limits.exe);
    cmd.arg("sheet-reader")
        .arg("--format")
        .arg(format.as_str())
        .arg("--max-decompressed")
        .arg(limits.max_decompressed.to_string())
        .arg("--memory")
        .arg(limits.memory.to_string())
        .arg("--cpu-seconds")
        .arg(limits.time.as_secs().max(1).to_string())
        .stdin(Stdio::from(file))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Logs of the child would only repeat the parent's.
        .env("RUST_LOG", "error");
    if let Some(s) = sheet {
        cmd.arg("--sheet").arg(s);
    }
    let mut child = cmd.spawn().map_err(|e| {
        unreadable(format!(
            "the spreadsheet reader could not be started ({}: {e})",
            limits.exe.display()
        ))
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let child = Arc::new(Mutex::new(child));

    // Keep the start of stderr (the reason of an abort), off the main read loop.
    let err_tail = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = stderr {
            let _ = e.take(64 * 1024).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    // Wall-clock watchdog: a reader that sleeps or blocks (not spinning, which the CPU
    // limit catches) is killed too.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (child, done, timed_out, limit) =
            (child.clone(), done.clone(), timed_out.clone(), limits.time);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if start.elapsed() > limit {
                    timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = child.lock().map(|mut c| c.kill());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let mut outcome: Result<(), Stop> = Ok(());
    let mut failed: Option<String> = None;
    if let Some(out) = stdout {
        let mut reader = BufReader::with_capacity(1 << 16, out);
        let mut frame = Vec::new();
        loop {
            let mut len = [0u8; 4];
            // End of the stream (or a child that died mid-frame): its exit status says why.
            if reader.read_exact(&mut len).is_err() {
                break;
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > MAX_FRAME {
                failed = Some(format!(
                    "the spreadsheet reader answered garbage (a frame of {len} bytes)"
                ));
                break;
            }
            frame.resize(len, 0);
            if reader.read_exact(&mut frame).is_err() {
                break;
            }
            let ev: Event = match postcard::from_bytes(&frame) {
                Ok(ev) => ev,
                Err(e) => {
                    failed = Some(format!("the spreadsheet reader answered garbage ({e})"));
                    break;
                }
            };
            let r = match ev {
                Event::Header(meta, sheet) => sink.header(&meta, sheet.as_deref()),
                Event::Row(row, bytes) => sink.row(row, bytes),
                Event::Fail(msg) => {
                    failed = Some(msg);
                    break;
                }
            };
            if let Err(stop) = r {
                outcome = Err(stop);
                break;
            }
        }
    }
    // Stop the child whatever happened (the sink may have refused more rows).
    let status = {
        let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
        if outcome.is_err() || failed.is_some() {
            let _ = c.kill();
        }
        c.wait()
    };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    let last_err = err_tail.join().unwrap_or_default();
    outcome?;
    if let Some(msg) = failed {
        return Err(Stop::File(FileError::Unreadable(msg)));
    }
    let status = status.map_err(|e| unreadable(format!("waiting for the reader: {e}")))?;
    if status.success() {
        return Ok(());
    }
    if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(unreadable(format!(
            "the spreadsheet could not be read within {} (the reader's time limit): it is damaged or built to exhaust a reader",
            humantime::format_duration(limits.time)
        )));
    }
    let first_line = last_err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    tracing::warn!(status = %status, reader_stderr = %first_line, "the spreadsheet reader died");
    let why = if last_err.contains("memory allocation") || last_err.contains("capacity overflow") {
        format!(
            "the spreadsheet declares sizes it does not hold: reading it needs more than the reader's memory limit of {} MiB (a damaged or hostile file)",
            limits.memory >> 20
        )
    } else if status.to_string().contains("signal: 24") || last_err.contains("CPU") {
        "the spreadsheet took more than the reader's CPU time limit to read: it is damaged or built to exhaust a reader".to_string()
    } else {
        "the spreadsheet is damaged: the reader stopped on it".to_string()
    };
    Err(unreadable(why))
}

/// Arguments of `finworker sheet-reader` (internal: the daemon runs it, with the file as stdin).
#[derive(Debug, clap::Args)]
pub struct ReaderArgs {
    /// xlsx, xls or ods.
    #[arg(long)]
    pub format: String,
    /// Sheet to read (the first when absent).
    #[arg(long)]
    pub sheet: Option<String>,
    /// `upload.max_decompressed_bytes`.
    #[arg(long)]
    pub max_decompressed: u64,
    /// Address-space limit, bytes.
    #[arg(long)]
    pub memory: u64,
    /// CPU-time limit, seconds.
    #[arg(long)]
    pub cpu_seconds: u64,
}

/// The child side: limits itself, reads stdin, writes frames. Column aliases come from
/// the same configuration the parent loaded (the environment is inherited).
pub fn child_main(args: ReaderArgs, aliases: &ColumnAliases) -> anyhow::Result<()> {
    // Limits first, before the file is touched.
    rlimit::setrlimit(rlimit::Resource::AS, args.memory, args.memory)?;
    rlimit::setrlimit(
        rlimit::Resource::CPU,
        args.cpu_seconds,
        args.cpu_seconds + 1,
    )?;
    let format = match args.format.as_str() {
        "xlsx" => Format::Xlsx,
        "xls" => Format::Xls,
        "ods" => Format::Ods,
        other => anyhow::bail!("sheet-reader: unknown format {other}"),
    };
    // stdin is the spooled file: reopen it as a seekable File (zip needs seeking).
    let file = File::open("/dev/stdin")?;
    let out = std::io::stdout();
    let mut sink = FrameSink {
        out: std::io::BufWriter::with_capacity(1 << 16, out.lock()),
    };
    let r = sheet::read(
        file,
        format,
        args.sheet.as_deref(),
        aliases,
        args.max_decompressed,
        &mut sink,
    );
    if let Err(Stop::File(e)) = r {
        sink.emit(&Event::Fail(e.to_string()))?;
    }
    sink.out.flush()?;
    Ok(())
}

struct FrameSink<W: Write> {
    out: W,
}

impl<W: Write> FrameSink<W> {
    fn emit(&mut self, ev: &Event) -> std::io::Result<()> {
        let bytes = postcard::to_stdvec(ev).map_err(std::io::Error::other)?;
        let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&bytes)
    }
}

impl<W: Write> RowSink for FrameSink<W> {
    fn header(&mut self, meta: &SourceMeta, sheet: Option<&str>) -> Result<(), Stop> {
        self.emit(&Event::Header(meta.clone(), sheet.map(str::to_string)))
            .map_err(|_| Stop::Cancelled)
    }

    fn row(&mut self, row: SourceRow, bytes_read: u64) -> Result<(), Stop> {
        self.emit(&Event::Row(row, bytes_read))
            .map_err(|_| Stop::Cancelled)
    }
}
