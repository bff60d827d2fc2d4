//! Container log files in the CRI format, and reading them for `kubectl logs`.
//!
//! containerd writes every line a container prints as one record:
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout P first part of a long line
//! 2016-10-06T00:17:09.669794203Z stdout F rest of it
//! 2016-10-06T00:17:09.669794204Z stderr F a line on stderr
//! ```
//!
//! `P` marks a fragment of a line the runtime had to split (its buffer is 16 KiB), `F` the
//! fragment that ends the line. [`read_logs`] turns such a file into what `kubectl logs` prints:
//! the content only, fragments joined into their line, optionally prefixed by the timestamp,
//! honouring the `PodLogOptions` the API server forwards (tail, since, limit, follow). The files
//! live where the kubelet keeps them ([`pod_log_dir`], [`container_log_path`]), so tools that read
//! kubelet log directories (log shippers) work unchanged.
//!
//! Differences from the kubelet's reader (pkg/kubelet/kuberuntime/logs), all deliberate:
//! - Fragments are joined per stream before anything is written, so a stdout line split by the
//!   runtime is not interleaved with a stderr line written meanwhile, and `timestamps` prefixes
//!   each line once (the kubelet prefixes every fragment, which puts a timestamp mid-line).
//! - `tailLines` counts lines, not records (the kubelet counts records, so a long line split into
//!   fragments counts several times).
//! - Following polls the file instead of using inotify (one `stat` per follower per
//!   [`FOLLOW_POLL`]), which keeps the agent free of a file-watching dependency.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How often a followed file is checked for growth or rotation once everything is read.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// How much of the file is read at once (also the largest chunk the stream yields, plus joined
/// fragments).
const READ_CHUNK: usize = 64 * 1024;

/// Fragments of one line are held back until the line ends; a "line" longer than this (a
/// container printing without newlines) is passed on in pieces instead of growing without bound.
const MAX_PENDING: usize = 1024 * 1024;

/// The options of `GET /containerLogs/...`, the kubelet's reading of `v1.PodLogOptions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (`tailLines`); `None` is all. Counted from the end of the file when
    /// the read starts.
    pub tail_lines: Option<i64>,
    /// Lines older than this are skipped (`sinceSeconds`/`sinceTime`, see [`since_from`]).
    pub since: Option<Timestamp>,
    /// Prefix each line with its RFC 3339 timestamp (nanoseconds, fixed width) and a space.
    pub timestamps: bool,
    /// Stop after this many bytes of output (the last line may be cut).
    pub limit_bytes: Option<i64>,
    /// Keep reading as the file grows until the `stop` future given to [`read_logs`] resolves.
    pub follow: bool,
}

/// The kubelet's rule for `sinceSeconds` and `sinceTime` (the API server lets only one through,
/// but when both come the later instant wins).
pub fn since_from(since_seconds: Option<i64>, since_time: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    let from_seconds = since_seconds.map(|s| now.saturating_sub(jiff::SignedDuration::from_secs(s)).unwrap_or(Timestamp::MIN));
    match (from_seconds, since_time) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A parsed `/containerLogs/{namespace}/{pod}/{container}` query string, as the API server
/// forwards it (pkg/registry/core/pod/strategy.go LogLocation builds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    pub options: LogOptions,
    /// Read the previous instance's log (the caller picks the file, see [`container_log_path`]).
    pub previous: bool,
}

impl LogQuery {
    /// Parses the raw query (`follow=true&tailLines=10&sinceTime=2024-01-01T00%3A00%3A00Z...`) with
    /// the API's conversion rules: a flag is true unless absent, `0` or `false`; numbers are
    /// decimal; `sinceTime` is RFC 3339. Bad values give the message to answer 400 with; values
    /// out of range give the API server's validation messages (the kubelet answers those 422).
    pub fn parse(query: &str, now: Timestamp) -> Result<Self, QueryError> {
        let mut follow = false;
        let mut previous = false;
        let mut timestamps = false;
        let mut tail_lines = None;
        let mut limit_bytes = None;
        let mut since_seconds = None;
        let mut since_time = None;
        let mut seen = std::collections::HashSet::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            // Go's url.Values conversion takes the first value of a repeated parameter.
            if !seen.insert(key.clone()) {
                continue;
            }
            let value = percent_decode(value)?;
            let flag = || !(value == "0" || value.eq_ignore_ascii_case("false"));
            let int = |name: &str| value.parse::<i64>().map_err(|_| QueryError::BadRequest(format!("strconv.ParseInt: parsing {value:?}: invalid syntax (in {name})")));
            match key.as_str() {
                "follow" => follow = flag(),
                "previous" => previous = flag(),
                "timestamps" => timestamps = flag(),
                "tailLines" => tail_lines = Some(int("tailLines")?),
                "limitBytes" => limit_bytes = Some(int("limitBytes")?),
                "sinceSeconds" => since_seconds = Some(int("sinceSeconds")?),
                "sinceTime" if !value.is_empty() => {
                    since_time = Some(value.parse::<Timestamp>().map_err(|e| QueryError::BadRequest(format!("invalid sinceTime {value:?}: {e}")))?)
                }
                _ => {}
            }
        }
        let mut problems = Vec::new();
        if tail_lines.is_some_and(|t| t < 0) {
            problems.push(format!("tailLines: Invalid value: {}: must be greater than or equal to 0", tail_lines.unwrap_or_default()));
        }
        if limit_bytes.is_some_and(|b| b < 1) {
            problems.push(format!("limitBytes: Invalid value: {}: must be greater than 0", limit_bytes.unwrap_or_default()));
        }
        match (since_seconds, since_time) {
            (Some(_), Some(_)) => problems.push(": Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified".into()),
            (Some(s), None) if s < 1 => problems.push(format!("sinceSeconds: Invalid value: {s}: must be greater than 0")),
            _ => {}
        }
        if !problems.is_empty() {
            return Err(QueryError::Invalid(if problems.len() == 1 { problems.remove(0) } else { format!("[{}]", problems.join(", ")) }));
        }
        let options = LogOptions { tail_lines, since: since_from(since_seconds, since_time, now), timestamps, limit_bytes, follow };
        Ok(Self { options, previous })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A value that does not parse (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// A value out of range (HTTP 422, as the kubelet answers failed validation).
    #[error("{0}")]
    Invalid(String),
}

fn percent_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(b) = hex else { return Err(QueryError::BadRequest(format!("invalid URL escape in {s:?}"))) };
                out.push(b);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QueryError::BadRequest(format!("invalid UTF-8 in {s:?}")))
}

/// The kubelet's directory for one pod's logs: `ROOT/<namespace>_<name>_<uid>` (ROOT is
/// `/var/log/pods` on a kubelet node).
pub fn pod_log_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// The log file of one instance of a container: `POD_LOG_DIR/<container>/<restartCount>.log`.
/// `kubectl logs --previous` reads instance `restartCount - 1` of the container.
pub fn container_log_path(pod_log_dir: &Path, container: &str, restart_count: u32) -> PathBuf {
    pod_log_dir.join(container).join(format!("{restart_count}.log"))
}

/// A stop condition from a "container is running" flag: resolves once the flag is false or its
/// sender is gone.
pub fn when_not_running(mut running: tokio::sync::watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let _ = running.wait_for(|r| !*r).await;
    }
}

/// The output of [`read_logs`]: chunks of bytes as `kubectl logs` prints them.
pub type LogStream = BoxStream<'static, io::Result<Bytes>>;

/// Opens a CRI log file and returns its content as `kubectl logs` expects it.
///
/// Opening and the search for the tail happen before this returns, so a missing file is an error
/// here (answer it before sending headers); errors while streaming come as the stream's last item.
///
/// Without `follow` the stream ends at the end of the file. With `follow` it waits for the file
/// to grow until `stop` resolves (the container exited: its output is complete), then reads what
/// is left and ends; dropping the stream ends it at once. `stop` is only polled while following
/// (a pending future such as [`std::future::pending`] follows for as long as the stream is read).
/// If the runtime rotates the file (renames it and starts a new one) the new file is followed
/// from its start; if it truncates it, reading restarts at its start.
pub async fn read_logs<F>(path: PathBuf, options: LogOptions, stop: F) -> io::Result<LogStream>
where
    F: Future<Output = ()> + Send + 'static,
{
    let tail = options.tail_lines;
    let open_path = path.clone();
    let (file, (start, skip_lines), ino) = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, (u64, u64), u64)> {
        let file = std::fs::File::open(&open_path)?;
        let ino = file.metadata()?.ino();
        let start = match tail {
            Some(n) if n >= 0 => tail_start(&file, n as u64)?,
            _ => (0, 0),
        };
        Ok((file, start, ino))
    })
    .await
    .map_err(io::Error::other)??;
    let mut file = tokio::fs::File::from_std(file);
    file.seek(SeekFrom::Start(start)).await?;
    // Without follow, tail counts lines written (as the kubelet's "limited mode"), so a file that
    // grows while it is read still yields N lines.
    let lines_left = match (tail, options.follow) {
        (Some(n), false) => Some(n.max(0) as u64),
        _ => None,
    };
    let reader = Reader {
        file,
        path,
        ino,
        offset: start,
        carry: Vec::new(),
        bytes_left: options.limit_bytes.map(|b| b.max(0) as u64),
        lines_left,
        formatter: Formatter { since: options.since, timestamps: options.timestamps, skip_lines, pending: Default::default() },
        follow: options.follow,
        stop: Some(Box::pin(stop)),
        done: lines_left == Some(0),
    };
    Ok(futures_util::stream::unfold(reader, |mut reader| async move {
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), reader)),
            Ok(None) => None,
            Err(e) => {
                reader.done = true;
                Some((Err(e), reader))
            }
        }
    })
    .boxed())
}

struct Reader {
    file: tokio::fs::File,
    path: PathBuf,
    ino: u64,
    /// Where `carry` starts in the file.
    offset: u64,
    /// Bytes after the last newline read: the start of a record not yet complete.
    carry: Vec<u8>,
    bytes_left: Option<u64>,
    lines_left: Option<u64>,
    formatter: Formatter,
    follow: bool,
    /// The caller's stop condition, until it has resolved.
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
}

impl Reader {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if self.done {
                return Ok(None);
            }
            let n = self.file.read(&mut buf).await?;
            let mut out = Vec::new();
            if n > 0 {
                self.carry.extend_from_slice(&buf[..n]);
                self.process_complete(&mut out);
                if !out.is_empty() {
                    return Ok(Some(Bytes::from(out)));
                }
                continue;
            }
            // End of the file, for now.
            if !self.follow || self.stop.is_none() {
                self.finish(&mut out);
                self.done = true;
                return Ok((!out.is_empty()).then(|| Bytes::from(out)));
            }
            if let Some(stop) = self.stop.as_mut() {
                tokio::select! {
                    _ = stop => {
                        // The writer is gone: one more read drains what it wrote last.
                        self.stop = None;
                    }
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
            self.check_rotation(&mut out).await?;
            if !out.is_empty() {
                return Ok(Some(Bytes::from(out)));
            }
        }
    }

    /// Formats every complete record in `carry`, keeping the incomplete rest.
    fn process_complete(&mut self, out: &mut Vec<u8>) {
        let mut consumed = 0;
        while let Some(nl) = self.carry[consumed..].iter().position(|&b| b == b'\n') {
            let line_end = consumed + nl;
            let ended = self.formatter.record(&self.carry[consumed..line_end], true, out);
            consumed = line_end + 1;
            self.after_output(out, ended);
            if self.done {
                break;
            }
        }
        self.carry.drain(..consumed);
        self.offset += consumed as u64;
    }

    /// The file ends here for good: an unterminated last record counts as is, and lines still
    /// waiting for their end go out without one.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.done && !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            let ended = self.formatter.record(&carry, false, out);
            self.after_output(out, ended);
        }
        if !self.done {
            self.formatter.flush_all(out);
            self.after_output(out, 0);
        }
    }

    /// Applies limitBytes and the tail line count to what was just formatted.
    fn after_output(&mut self, out: &mut Vec<u8>, lines_ended: u64) {
        if let Some(left) = self.bytes_left.as_mut() {
            if out.len() as u64 >= *left {
                out.truncate(*left as usize);
                *left = 0;
                self.done = true;
            }
        }
        if let Some(left) = self.lines_left.as_mut() {
            *left = left.saturating_sub(lines_ended);
            if *left == 0 {
                self.done = true;
            }
        }
    }

    /// Follows a rotated file to its successor, and a truncated one back to its start.
    async fn check_rotation(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Ok(meta) = tokio::fs::metadata(&self.path).await else {
            // Renamed away and not yet recreated: keep the old file.
            return Ok(());
        };
        if meta.ino() != self.ino {
            match tokio::fs::File::open(&self.path).await {
                Ok(file) => {
                    // The old file is complete: its unterminated last record counts as is.
                    if !self.carry.is_empty() {
                        let carry = std::mem::take(&mut self.carry);
                        let ended = self.formatter.record(&carry, false, out);
                        self.after_output(out, ended);
                    }
                    self.file = file;
                    self.ino = meta.ino();
                    self.offset = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else if meta.len() < self.offset + self.carry.len() as u64 {
            self.file.seek(SeekFrom::Start(0)).await?;
            self.carry.clear();
            self.offset = 0;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamKind {
    Stdout = 0,
    Stderr = 1,
}

/// One parsed record.
struct Record<'a> {
    time: Timestamp,
    raw_time: &'a [u8],
    stream: StreamKind,
    partial: bool,
    content: &'a [u8],
}

fn split_space(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = line.iter().position(|&b| b == b' ')?;
    Some((&line[..i], &line[i + 1..]))
}

/// Parses `<timestamp> <stream> <tag>[ <content>]` (the line without its newline); tags are
/// `P` or `F`, optionally followed by `:`-separated extensions, as the CRI allows.
fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let (raw_time, rest) = split_space(line)?;
    let time = std::str::from_utf8(raw_time).ok()?.parse::<Timestamp>().ok()?;
    let (stream, rest) = split_space(rest)?;
    let stream = match stream {
        b"stdout" => StreamKind::Stdout,
        b"stderr" => StreamKind::Stderr,
        _ => return None,
    };
    let (tag, content) = split_space(rest).unwrap_or((rest, &[]));
    let partial = tag.split(|&b| b == b':').next() == Some(b"P");
    Some(Record { time, raw_time, stream, partial, content })
}

/// Go's RFC3339NanoFixed, which the kubelet prints: nine fractional digits, in the offset the
/// runtime wrote (`Z` for UTC).
fn format_time(time: Timestamp, raw: &[u8]) -> String {
    let offset_seconds = match raw.last() {
        Some(b'Z' | b'z') => 0,
        _ => {
            let parse = || -> Option<i32> {
                let tail = std::str::from_utf8(raw.get(raw.len().checked_sub(6)?..)?).ok()?;
                let sign = match tail.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let hours: i32 = tail.get(1..3)?.parse().ok()?;
                let minutes: i32 = tail.get(4..6)?.parse().ok()?;
                Some(sign * (hours * 3600 + minutes * 60))
            };
            parse().unwrap_or(0)
        }
    };
    let offset = jiff::tz::Offset::from_seconds(offset_seconds).unwrap_or(jiff::tz::Offset::UTC);
    let civil = offset.to_datetime(time).strftime("%Y-%m-%dT%H:%M:%S.%N").to_string();
    if offset_seconds == 0 {
        format!("{civil}Z")
    } else {
        let sign = if offset_seconds < 0 { '-' } else { '+' };
        let abs = offset_seconds.abs();
        format!("{civil}{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// A line of one stream being assembled from fragments.
#[derive(Default)]
struct Pending {
    content: Vec<u8>,
    /// The first fragment's timestamp: the line's, for `since` and the prefix.
    first: Option<(Timestamp, String)>,
    /// Part of this line already went out (it grew past MAX_PENDING): the rest follows bare.
    started: bool,
    /// The line started before `since`: its remaining fragments are dropped too.
    skipping: bool,
}

struct Formatter {
    since: Option<Timestamp>,
    timestamps: bool,
    /// Lines to drop as they end (see [`tail_start`]).
    skip_lines: u64,
    pending: [Pending; 2],
}

impl Formatter {
    /// Formats one record into `out`; returns how many lines it ended (0 or 1). `complete` is
    /// false for a record cut short by the end of the file, whose content is taken as is.
    fn record(&mut self, line: &[u8], complete: bool, out: &mut Vec<u8>) -> u64 {
        let Some(record) = parse_record(line) else {
            // Not a CRI record (a torn write, or another format): skipped, as the kubelet does.
            return 0;
        };
        let since = self.since;
        let timestamps = self.timestamps;
        let pending = &mut self.pending[record.stream as usize];
        if pending.first.is_none() && !pending.started && !pending.skipping {
            let shown = if timestamps { format_time(record.time, record.raw_time) } else { String::new() };
            pending.first = Some((record.time, shown));
            pending.skipping = since.is_some_and(|s| record.time < s);
        }
        if !pending.skipping {
            pending.content.extend_from_slice(record.content);
        }
        if record.partial || !complete {
            if pending.content.len() > MAX_PENDING {
                Self::emit(pending, timestamps, false, out);
            }
            return 0;
        }
        if self.skip_lines > 0 {
            self.skip_lines -= 1;
            *pending = Pending::default();
            return 0;
        }
        if !pending.skipping {
            Self::emit(pending, timestamps, true, out);
        }
        *pending = Pending::default();
        1
    }

    fn emit(pending: &mut Pending, timestamps: bool, newline: bool, out: &mut Vec<u8>) {
        if pending.skipping {
            pending.content.clear();
            return;
        }
        if timestamps && !pending.started {
            if let Some((_, shown)) = &pending.first {
                out.extend_from_slice(shown.as_bytes());
                out.push(b' ');
            }
        }
        out.extend_from_slice(&pending.content);
        if newline {
            out.push(b'\n');
        }
        pending.content.clear();
        pending.started = true;
    }

    /// Lines still waiting for their end go out as they are (the file ended).
    fn flush_all(&mut self, out: &mut Vec<u8>) {
        let timestamps = self.timestamps;
        for pending in &mut self.pending {
            if !pending.content.is_empty() {
                Self::emit(pending, timestamps, false, out);
            }
            *pending = Pending::default();
        }
    }
}

/// Where to start reading for the last `lines` lines of a CRI log, and how many lines to drop
/// first; reads backwards from the end in blocks (a big file costs what its tail costs).
///
/// A line is an `F` record with the `P` records of its stream before it; a run of `P` records at
/// the very end (a line still being written) counts as one line; an unterminated record at the
/// end is not counted. Lines come out in the order they end, so when a wanted line's first
/// fragments come before some unwanted line's end (the streams interleave), reading starts at the
/// fragments and the unwanted lines, which come out first, are dropped.
fn tail_start(file: &std::fs::File, lines: u64) -> io::Result<(u64, u64)> {
    let size = file.metadata()?.len();
    let mut scan = BackScanner { file, window_start: size, window: Vec::new() };
    // The end of the last complete record: just past the last newline.
    let Some(last_newline) = scan.prev_newline(size)? else { return Ok((0, 0)) };
    let mut start = last_newline + 1;
    if lines == 0 {
        return Ok((start, 0));
    }
    let mut counted = 0u64;
    let mut skip = 0u64;
    let mut unwanted = 0u64;
    // Per stream: a record of it was seen (from the end); a wanted line of it is open (its end
    // was seen, its beginning not yet).
    let mut seen = [false; 2];
    let mut open = [false; 2];
    let mut record_end = last_newline;
    loop {
        let previous = scan.prev_newline(record_end)?;
        let record_start = previous.map_or(0, |p| p + 1);
        let header = scan.header(record_start, record_end)?;
        // Records that are not CRI records produce no output and are not lines.
        if let Some((stream, partial)) = parse_tag(&header) {
            let s = stream as usize;
            let trailing_run = partial && !seen[s];
            seen[s] = true;
            if partial && open[s] {
                start = record_start;
                skip = unwanted;
            } else if !partial || trailing_run {
                // This record ends a line; an open line of this stream begins after it.
                open[s] = false;
                if counted < lines {
                    counted += 1;
                    open[s] = true;
                    start = record_start;
                    skip = unwanted;
                } else {
                    unwanted += 1;
                }
            }
            if counted == lines && !open.iter().any(|o| *o) {
                return Ok((start, skip));
            }
        }
        match previous {
            Some(p) => record_end = p,
            None => return Ok((start, skip)),
        }
    }
}

/// Stream and partial flag from the first bytes of a record (its content may be cut off).
fn parse_tag(header: &[u8]) -> Option<(StreamKind, bool)> {
    let (_, rest) = split_space(header)?;
    let (stream, rest) = split_space(rest)?;
    let stream = match stream {
        b"stdout" => StreamKind::Stdout,
        b"stderr" => StreamKind::Stderr,
        _ => return None,
    };
    let tag = split_space(rest).map_or(rest, |(t, _)| t);
    Some((stream, tag.split(|&b| b == b':').next() == Some(b"P")))
}

/// Reads a file backwards one block at a time, without keeping more than one block.
struct BackScanner<'a> {
    file: &'a std::fs::File,
    /// The block held: file bytes `[window_start, window_start + window.len())`.
    window_start: u64,
    window: Vec<u8>,
}

/// Long enough for a timestamp, the stream and the tag.
const HEADER_BYTES: u64 = 80;

impl BackScanner<'_> {
    /// The position of the last newline before `before`.
    fn prev_newline(&mut self, before: u64) -> io::Result<Option<u64>> {
        let mut limit = before;
        loop {
            if limit > self.window_start && limit <= self.window_start + self.window.len() as u64 {
                let upto = (limit - self.window_start) as usize;
                if let Some(i) = self.window[..upto].iter().rposition(|&b| b == b'\n') {
                    return Ok(Some(self.window_start + i as u64));
                }
                limit = self.window_start;
            }
            if limit == 0 {
                return Ok(None);
            }
            let start = limit.saturating_sub(READ_CHUNK as u64);
            let mut block = vec![0u8; (limit - start) as usize];
            self.file.read_exact_at(&mut block, start)?;
            self.window = block;
            self.window_start = start;
        }
    }

    /// The first bytes of the record `[start, end)`.
    fn header(&self, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let len = (end - start).min(HEADER_BYTES);
        let window_end = self.window_start + self.window.len() as u64;
        if start >= self.window_start && start + len <= window_end {
            let from = (start - self.window_start) as usize;
            return Ok(self.window[from..from + len as usize].to_vec());
        }
        let mut header = vec![0u8; len as usize];
        self.file.read_exact_at(&mut header, start)?;
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl TempFile {
        fn new(contents: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!("berth-logs-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("0.log");
            std::fs::write(&path, contents).unwrap();
            Self { dir, path }
        }

        fn append(&self, contents: &str) {
            let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).unwrap();
            f.write_all(contents.as_bytes()).unwrap();
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const SAMPLE: &str = "\
2024-05-01T10:00:00.000000001Z stdout F one
2024-05-01T10:00:01.5Z stderr F two on stderr
2024-05-01T10:00:02.000000003Z stdout P thr
2024-05-01T10:00:02.000000004Z stderr F between
2024-05-01T10:00:02.000000005Z stdout F ee
2024-05-01T10:00:03.000000006Z stdout F
2024-05-01T10:00:04.000000007Z stdout F four
";

    async fn read(contents: &str, options: LogOptions) -> String {
        let file = TempFile::new(contents);
        read_path(&file.path, options).await
    }

    async fn read_path(path: &Path, options: LogOptions) -> String {
        let stream = read_logs(path.to_path_buf(), options, std::future::pending()).await.unwrap();
        let chunks: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        String::from_utf8(chunks.concat()).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn joins_fragments_per_stream_and_keeps_both_streams() {
        let out = read(SAMPLE, LogOptions::default()).await;
        assert_eq!(out, "one\ntwo on stderr\nbetween\nthree\n\nfour\n");
    }

    #[tokio::test]
    async fn timestamps_prefix_each_line_once_with_nine_digits() {
        let out = read(SAMPLE, LogOptions { timestamps: true, ..Default::default() }).await;
        let expected = "\
2024-05-01T10:00:00.000000001Z one
2024-05-01T10:00:01.500000000Z two on stderr
2024-05-01T10:00:02.000000004Z between
2024-05-01T10:00:02.000000003Z three
2024-05-01T10:00:03.000000006Z 
2024-05-01T10:00:04.000000007Z four
";
        assert_eq!(out, expected);
        let local = read("2024-05-01T12:00:00.25+02:00 stdout F hi\n", LogOptions { timestamps: true, ..Default::default() }).await;
        assert_eq!(local, "2024-05-01T12:00:00.250000000+02:00 hi\n");
    }

    #[tokio::test]
    async fn tail_counts_lines_from_the_end() {
        let tail = |n| LogOptions { tail_lines: Some(n), ..Default::default() };
        assert_eq!(read(SAMPLE, tail(0)).await, "");
        assert_eq!(read(SAMPLE, tail(1)).await, "four\n");
        assert_eq!(read(SAMPLE, tail(2)).await, "\nfour\n");
        // The split line counts once and comes whole.
        assert_eq!(read(SAMPLE, tail(3)).await, "three\n\nfour\n");
        assert_eq!(read(SAMPLE, tail(4)).await, "between\nthree\n\nfour\n");
        assert_eq!(read(SAMPLE, tail(100)).await, read(SAMPLE, LogOptions::default()).await);
        // A line still being written at the end is one line.
        let unfinished = format!("{SAMPLE}2024-05-01T10:00:05Z stdout P fi\n2024-05-01T10:00:05Z stdout P ve\n");
        assert_eq!(read(&unfinished, tail(2)).await, "four\nfive");
    }

    #[tokio::test]
    async fn tail_of_a_big_file_reads_across_blocks() {
        let mut contents = String::new();
        for i in 0..20_000 {
            contents.push_str(&format!("2024-05-01T10:00:00.{i:09}Z stdout F line {i}\n"));
        }
        // A long line split into fragments that span several blocks.
        let long = "x".repeat(16 * 1024);
        for _ in 0..10 {
            contents.push_str(&format!("2024-05-01T11:00:00Z stdout P {long}\n"));
        }
        contents.push_str("2024-05-01T11:00:00Z stdout F end\n");
        contents.push_str("2024-05-01T11:00:01Z stdout F last\n");
        let out = read(&contents, LogOptions { tail_lines: Some(3), ..Default::default() }).await;
        assert_eq!(out, format!("line 19999\n{}end\nlast\n", long.repeat(10)));
    }

    #[tokio::test]
    async fn since_skips_older_lines_by_their_first_fragment() {
        let out = read(SAMPLE, LogOptions { since: Some(ts("2024-05-01T10:00:02.000000004Z")), ..Default::default() }).await;
        // "three" began before since (its first fragment), so it goes with the older lines.
        assert_eq!(out, "between\n\nfour\n");
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_output() {
        assert_eq!(read(SAMPLE, LogOptions { limit_bytes: Some(6), ..Default::default() }).await, "one\ntw");
        let with_ts = read(SAMPLE, LogOptions { limit_bytes: Some(10), timestamps: true, ..Default::default() }).await;
        assert_eq!(with_ts, "2024-05-01");
    }

    #[tokio::test]
    async fn unterminated_and_garbage_records() {
        let contents = "not a record\n2024-05-01T10:00:00Z stdout F ok\n2024-05-01T10:00:01Z stdout P half\n2024-05-01T10:00:02Z stdout F cut sho";
        assert_eq!(read(contents, LogOptions::default()).await, "ok\nhalfcut sho");
        // tags may carry extensions after ':'
        assert_eq!(read("2024-05-01T10:00:00Z stdout P:x a\n2024-05-01T10:00:00Z stdout F:x b\n", LogOptions::default()).await, "ab\n");
    }

    #[tokio::test]
    async fn missing_file_is_an_error_before_streaming() {
        let err = read_logs(PathBuf::from("/nonexistent/berth/0.log"), LogOptions::default(), std::future::pending()).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn follow_streams_appends_until_stopped_then_drains() {
        let file = TempFile::new("2024-05-01T10:00:00Z stdout F first\n");
        let (running_tx, running_rx) = tokio::sync::watch::channel(true);
        let options = LogOptions { follow: true, ..Default::default() };
        let mut stream = read_logs(file.path.clone(), options, when_not_running(running_rx)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from("first\n"));

        let path = file.path.clone();
        let writer = tokio::spawn(async move {
            let append = |s: &str| {
                let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                f.write_all(s.as_bytes()).unwrap();
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            append("2024-05-01T10:00:01Z stderr P sec");
            tokio::time::sleep(Duration::from_millis(300)).await;
            append("ond part\n2024-05-01T10:00:01Z stderr F  and more\n");
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from("second part and more\n"));
        writer.await.unwrap();

        // The container exits after a last line: it still comes, then the stream ends.
        file.append("2024-05-01T10:00:02Z stdout F last words\n");
        running_tx.send(false).unwrap();
        let rest: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(rest.concat(), b"last words\n");
    }

    #[tokio::test]
    async fn follow_with_tail_starts_near_the_end() {
        let file = TempFile::new(SAMPLE);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let options = LogOptions { follow: true, tail_lines: Some(1), ..Default::default() };
        let mut stream = read_logs(file.path.clone(), options, async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from("four\n"));
        file.append("2024-05-01T10:00:05Z stdout F five\n");
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from("five\n"));
        stop_tx.send(()).unwrap();
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn follow_continues_into_a_rotated_file() {
        let file = TempFile::new("2024-05-01T10:00:00Z stdout F before\n");
        let (running_tx, running_rx) = tokio::sync::watch::channel(true);
        let mut stream = read_logs(file.path.clone(), LogOptions { follow: true, ..Default::default() }, when_not_running(running_rx)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from("before\n"));
        std::fs::rename(&file.path, file.dir.join("0.log.20240501-100000")).unwrap();
        std::fs::write(&file.path, "2024-05-01T10:00:01Z stdout F after\n").unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), Bytes::from("after\n"));
        drop(running_tx);
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn query_parsing_follows_the_api_conversion_rules() {
        let now = ts("2024-05-01T10:00:00Z");
        let q = LogQuery::parse("follow=true&previous=1&tailLines=10&limitBytes=5&timestamps=true&sinceTime=2024-05-01T09%3A00%3A00Z", now).unwrap();
        assert_eq!(
            q,
            LogQuery {
                options: LogOptions { tail_lines: Some(10), since: Some(ts("2024-05-01T09:00:00Z")), timestamps: true, limit_bytes: Some(5), follow: true },
                previous: true,
            }
        );
        let q = LogQuery::parse("follow=false&sinceSeconds=60", now).unwrap();
        assert!(!q.options.follow);
        assert_eq!(q.options.since, Some(ts("2024-05-01T09:59:00Z")));
        assert!(matches!(LogQuery::parse("tailLines=x", now), Err(QueryError::BadRequest(_))));
        assert_eq!(
            LogQuery::parse("tailLines=-1", now),
            Err(QueryError::Invalid("tailLines: Invalid value: -1: must be greater than or equal to 0".into()))
        );
    }

    #[test]
    fn layout_matches_the_kubelet() {
        let dir = pod_log_dir(Path::new("/var/log/pods"), "default", "web", "1234");
        assert_eq!(dir, PathBuf::from("/var/log/pods/default_web_1234"));
        assert_eq!(container_log_path(&dir, "nginx", 2), PathBuf::from("/var/log/pods/default_web_1234/nginx/2.log"));
    }
}
