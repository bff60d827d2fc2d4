//! The CronJob controller (batch/v1), after kube-controller-manager's v2 controller: creates a
//! Job named `<cronjob>-<scheduled time in minutes since the epoch>` at each scheduled time (the
//! name doubles as a lock, so a time is never run twice), honours `concurrencyPolicy`,
//! `suspend`, `startingDeadlineSeconds` and `timeZone`, keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`, prunes finished Jobs beyond the history limits,
//! and requeues each CronJob for its next scheduled time.
//!
//! Schedules are parsed as upstream's (robfig/cron `ParseStandard`): five fields with ranges,
//! lists, steps, month and weekday names and `?`, the descriptors `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` and `@every <duration>`, and a
//! `TZ=`/`CRON_TZ=` prefix (which upstream's validation rejects on new objects in favour of
//! `spec.timeZone`; the controller still honours it on old ones, with a warning event).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};

use crate::cache::Cache;
use crate::events::{Recorder, reference};
use crate::job::is_finished;
use crate::workqueue::{WorkQueue, run_workers};

type Key = (String, String);

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
const COMPONENT: &str = "cronjob-controller";
/// Requeues land this much after the scheduled time, so a slightly early clock still finds the
/// time due.
const NEXT_SCHEDULE_DELTA: SignedDuration = SignedDuration::from_millis(100);

/// A small cron parser and next-time computation with robfig/cron v3's semantics, which
/// upstream's CronJob controller uses.
pub mod cron {
    use jiff::tz::TimeZone;
    use jiff::{SignedDuration, Timestamp, ToSpan, Zoned, civil};

    const STAR: u64 = 1 << 63;

    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    #[error("{0}")]
    pub struct ParseError(pub String);

    fn err<T>(message: String) -> Result<T, ParseError> {
        Err(ParseError(message))
    }

    #[derive(Clone, Debug)]
    pub struct Schedule {
        kind: Kind,
        /// The zone a `TZ=`/`CRON_TZ=` prefix named.
        pub zone: Option<TimeZone>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Fields(Fields),
        /// `@every`: a fixed delay in whole seconds.
        Every(SignedDuration),
    }

    /// One bit per allowed value; the star bit marks a field written `*` or `?`, which changes
    /// how day-of-month and day-of-week combine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Fields {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
    }

    struct Bounds {
        min: u32,
        max: u32,
        names: &'static [(&'static str, u32)],
    }

    const MINUTES: Bounds = Bounds { min: 0, max: 59, names: &[] };
    const HOURS: Bounds = Bounds { min: 0, max: 23, names: &[] };
    const DOM: Bounds = Bounds { min: 1, max: 31, names: &[] };
    const MONTHS: Bounds =
        Bounds { min: 1, max: 12, names: &[("jan", 1), ("feb", 2), ("mar", 3), ("apr", 4), ("may", 5), ("jun", 6), ("jul", 7), ("aug", 8), ("sep", 9), ("oct", 10), ("nov", 11), ("dec", 12)] };
    const DOW: Bounds = Bounds { min: 0, max: 6, names: &[("sun", 0), ("mon", 1), ("tue", 2), ("wed", 3), ("thu", 4), ("fri", 5), ("sat", 6)] };

    /// Go's `time.LoadLocation`: empty and `UTC` are UTC, `Local` the process's zone.
    pub fn load_location(name: &str) -> Result<TimeZone, ParseError> {
        match name {
            "" | "UTC" => Ok(TimeZone::UTC),
            "Local" => Ok(TimeZone::system()),
            _ => TimeZone::get(name).map_err(|_| ParseError(format!("unknown time zone {name}"))),
        }
    }

    pub fn parse(spec: &str) -> Result<Schedule, ParseError> {
        if spec.is_empty() {
            return err("empty spec string".into());
        }
        let mut spec = spec;
        let mut zone = None;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let eq = spec.find('=').unwrap_or(0);
            let Some(space) = spec.find(' ') else { return err(format!("provided bad location {}: missing schedule", &spec[eq + 1..])) };
            let name = &spec[eq + 1..space];
            zone = Some(load_location(name).map_err(|e| ParseError(format!("provided bad location {name}: {e}")))?);
            spec = spec[space..].trim();
        }
        if spec.starts_with('@') {
            return Ok(Schedule { kind: parse_descriptor(spec)?, zone });
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return err(format!("expected exactly 5 fields, found {}: [{}]", fields.len(), fields.join(" ")));
        }
        let fields = Fields { minute: field(fields[0], &MINUTES)?, hour: field(fields[1], &HOURS)?, dom: field(fields[2], &DOM)?, month: field(fields[3], &MONTHS)?, dow: field(fields[4], &DOW)? };
        Ok(Schedule { kind: Kind::Fields(fields), zone })
    }

    fn all(b: &Bounds) -> u64 {
        bits(b.min, b.max, 1) | STAR
    }

    fn parse_descriptor(spec: &str) -> Result<Kind, ParseError> {
        let (dom1, month1, dow0) = (1 << DOM.min, 1 << MONTHS.min, 1 << DOW.min);
        let fields = |minute, hour, dom, month, dow| Ok(Kind::Fields(Fields { minute, hour, dom, month, dow }));
        match spec {
            "@yearly" | "@annually" => fields(1, 1, dom1, month1, all(&DOW)),
            "@monthly" => fields(1, 1, dom1, all(&MONTHS), all(&DOW)),
            "@weekly" => fields(1, 1, all(&DOM), all(&MONTHS), dow0),
            "@daily" | "@midnight" => fields(1, 1, all(&DOM), all(&MONTHS), all(&DOW)),
            "@hourly" => fields(1, all(&HOURS), all(&DOM), all(&MONTHS), all(&DOW)),
            _ => match spec.strip_prefix("@every ") {
                Some(text) => {
                    let d = parse_go_duration(text).map_err(|e| ParseError(format!("failed to parse duration {spec}: {e}")))?;
                    // At least a second, in whole seconds.
                    let secs = d.as_secs().max(1);
                    Ok(Kind::Every(SignedDuration::from_secs(secs)))
                }
                None => err(format!("unrecognized descriptor: {spec}")),
            },
        }
    }

    /// Go's `time.ParseDuration` ("1h30m", "90s", "1.5h"), to the nanosecond.
    pub fn parse_go_duration(text: &str) -> Result<SignedDuration, String> {
        let invalid = || format!("time: invalid duration {text:?}");
        let (negative, mut rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        if rest == "0" {
            return Ok(SignedDuration::ZERO);
        }
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: f64 = 0.0;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let number = &rest[..number_len];
            if number.is_empty() || number == "." {
                return Err(invalid());
            }
            let value: f64 = number.parse().map_err(|_| invalid())?;
            rest = &rest[number_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let nanos: f64 = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "" => return Err(format!("time: missing unit in duration {text:?}")),
                unit => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
            };
            rest = &rest[unit_len..];
            total += value * nanos;
        }
        if total > i64::MAX as f64 {
            return Err(invalid());
        }
        let nanos = total as i64;
        let d = SignedDuration::new(nanos / 1_000_000_000, (nanos % 1_000_000_000) as i32);
        Ok(if negative { -d } else { d })
    }

    fn field(text: &str, b: &Bounds) -> Result<u64, ParseError> {
        let mut out = 0;
        for part in text.split(',').filter(|p| !p.is_empty()) {
            out |= range(part, b)?;
        }
        Ok(out)
    }

    fn bits(min: u32, max: u32, step: u32) -> u64 {
        if step == 1 {
            return (!(u64::MAX.checked_shl(max + 1).unwrap_or(0))) & (u64::MAX << min);
        }
        (min..=max).step_by(step as usize).fold(0, |acc, i| acc | 1 << i)
    }

    fn number(expr: &str) -> Result<u32, ParseError> {
        match expr.parse::<i64>() {
            Ok(n) if n < 0 => err(format!("negative number ({n}) not allowed: {expr}")),
            Ok(n) => u32::try_from(n).or_else(|_| err(format!("failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: value out of range"))),
            Err(_) => err(format!("failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: invalid syntax")),
        }
    }

    fn number_or_name(expr: &str, b: &Bounds) -> Result<u32, ParseError> {
        let lower = expr.to_ascii_lowercase();
        match b.names.iter().find(|(n, _)| *n == lower) {
            Some((_, v)) => Ok(*v),
            None => number(expr),
        }
    }

    /// `*`, `?`, `n`, `a-b`, each optionally `/step`; `n/step` means `n-max/step`.
    fn range(expr: &str, b: &Bounds) -> Result<u64, ParseError> {
        let mut range_and_step = expr.split('/');
        let range_part = range_and_step.next().unwrap_or("");
        let step_part = range_and_step.next();
        if range_and_step.next().is_some() {
            return err(format!("too many slashes: {expr}"));
        }
        let low_high: Vec<&str> = range_part.split('-').collect();
        let single = low_high.len() == 1;
        let (start, mut end, mut extra) = if low_high[0] == "*" || low_high[0] == "?" {
            (b.min, b.max, STAR)
        } else {
            let start = number_or_name(low_high[0], b)?;
            let end = match low_high.len() {
                1 => start,
                2 => number_or_name(low_high[1], b)?,
                _ => return err(format!("too many hyphens: {expr}")),
            };
            (start, end, 0)
        };
        let step = match step_part {
            None => 1,
            Some(s) => {
                let step = number(s)?;
                if single {
                    end = b.max;
                }
                if step > 1 {
                    extra = 0;
                }
                step
            }
        };
        if start < b.min {
            return err(format!("beginning of range ({start}) below minimum ({}): {expr}", b.min));
        }
        if end > b.max {
            return err(format!("end of range ({end}) above maximum ({}): {expr}", b.max));
        }
        if start > end {
            return err(format!("beginning of range ({start}) beyond end of range ({end}): {expr}"));
        }
        if step == 0 {
            return err(format!("step of range should be a positive number: {expr}"));
        }
        Ok(bits(start, end, step) | extra)
    }

    fn has(bits: u64, value: i8) -> bool {
        (0..63).contains(&value) && bits & (1 << value) != 0
    }

    /// Day-of-month and day-of-week are OR-ed, unless either is a star: then both must match.
    fn day_matches(f: &Fields, t: &Zoned) -> bool {
        let dom = has(f.dom, t.day());
        let dow = has(f.dow, t.weekday().to_sunday_zero_offset());
        if f.dom & STAR != 0 || f.dow & STAR != 0 { dom && dow } else { dom || dow }
    }

    fn at(zone: &TimeZone, year: i16, month: i8, day: i8, hour: i8) -> Option<Zoned> {
        civil::Date::new(year, month, day).ok()?.at(hour, 0, 0, 0).to_zoned(zone.clone()).ok()
    }

    impl Schedule {
        /// The first scheduled time strictly after `after`, reading the fields in `zone` (the
        /// schedule's own `TZ=` zone is the caller's to prefer). None when nothing matches
        /// within five years (e.g. February 30th).
        pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
            match self.kind {
                Kind::Every(delay) => {
                    let whole = after.checked_sub(SignedDuration::new(0, after.subsec_nanosecond())).ok()?;
                    whole.checked_add(delay).ok()
                }
                Kind::Fields(f) => next_fields(&f, after, zone),
            }
        }
    }

    /// robfig's SpecSchedule.Next, step for step, so that DST behaves as upstream's: a time in a
    /// skipped hour does not run that day, a time in a repeated hour runs twice.
    fn next_fields(f: &Fields, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let mut t = after.to_zoned(zone.clone());
        t = t.checked_add(SignedDuration::new(1, -t.subsec_nanosecond())).ok()?;
        let mut added = false;
        let year_limit = t.year() + 5;
        'wrap: loop {
            if t.year() > year_limit {
                return None;
            }
            while !has(f.month, t.month()) {
                if !added {
                    added = true;
                    t = at(zone, t.year(), t.month(), 1, 0)?;
                }
                t = t.checked_add(1.month()).ok()?;
                if t.month() == 1 {
                    continue 'wrap;
                }
            }
            while !day_matches(f, &t) {
                if !added {
                    added = true;
                    t = at(zone, t.year(), t.month(), t.day(), 0)?;
                }
                t = t.checked_add(1.day()).ok()?;
                // Midnight may have moved by a DST change: back to it.
                let hour = t.hour();
                if hour != 0 {
                    t = if hour > 12 { t.checked_add(SignedDuration::from_hours(i64::from(24 - hour))) } else { t.checked_sub(SignedDuration::from_hours(i64::from(hour))) }.ok()?;
                }
                if t.day() == 1 {
                    continue 'wrap;
                }
            }
            while !has(f.hour, t.hour()) {
                if !added {
                    added = true;
                    t = at(zone, t.year(), t.month(), t.day(), t.hour())?;
                }
                t = t.checked_add(SignedDuration::from_hours(1)).ok()?;
                if t.hour() == 0 {
                    continue 'wrap;
                }
            }
            while !has(f.minute, t.minute()) {
                if !added {
                    added = true;
                    t = t.checked_sub(SignedDuration::new(i64::from(t.second()), t.subsec_nanosecond())).ok()?;
                }
                t = t.checked_add(SignedDuration::from_mins(1)).ok()?;
                if t.minute() == 0 {
                    continue 'wrap;
                }
            }
            if t.second() != 0 || t.subsec_nanosecond() != 0 {
                t = t.checked_sub(SignedDuration::new(0, t.subsec_nanosecond())).ok()?;
                t = t.checked_add(SignedDuration::from_secs(i64::from(60 - t.second()))).ok()?;
                added = true;
                continue 'wrap;
            }
            return Some(t.timestamp());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduling decisions, free of I/O so they can be tested with any "now".

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    None,
    Few,
    /// More than 100: only the latest is considered, and the user is warned.
    Many,
}

/// Returns the time scheduling starts from (last schedule, else creation, pushed forward by
/// `startingDeadlineSeconds` when asked), the most recent scheduled time in (that, now], and
/// how many were missed. Errs for a schedule whose times are under a second apart or never come.
pub fn most_recent_schedule_time(cj: &CronJob, now: Timestamp, schedule: &cron::Schedule, zone: &TimeZone, include_deadline: bool) -> Result<(Timestamp, Option<Timestamp>, Missed), String> {
    let status = cj.status.as_ref();
    let mut earliest = status.and_then(|s| s.last_schedule_time.as_ref()).or(cj.metadata.creation_timestamp.as_ref()).map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
    if include_deadline && let Some(deadline) = cj.spec.as_ref().and_then(|s| s.starting_deadline_seconds) {
        let from = now - SignedDuration::from_secs(deadline);
        if from > earliest {
            earliest = from;
        }
    }
    let never = || "time difference between two schedules is less than 1 second".to_string();
    let t1 = schedule.next(earliest, zone).ok_or_else(never)?;
    if now < t1 {
        return Ok((earliest, None, Missed::None));
    }
    let t2 = schedule.next(t1, zone).ok_or_else(never)?;
    if now < t2 {
        return Ok((earliest, Some(t1), Missed::None));
    }
    // Count the missed times roughly by the first interval, then walk only the last few.
    let between = t2.duration_since(t1).round(jiff::Unit::Second).map(|d| d.as_secs()).unwrap_or(0);
    if between < 1 {
        return Err(never());
    }
    let elapsed = now.duration_since(t1).as_secs();
    let missed = elapsed / between + 1;
    let start = t1 + SignedDuration::from_secs((missed - 2) * between);
    let mut most_recent = None;
    let mut t = schedule.next(start, zone);
    while let Some(at) = t.filter(|at| *at <= now) {
        most_recent = Some(at);
        t = schedule.next(at, zone);
    }
    let missed = if missed > 100 { Missed::Many } else { Missed::Few };
    Ok((earliest, most_recent, missed))
}

/// How long until the CronJob should be looked at again: just after its next scheduled time.
pub fn next_schedule_delay(cj: &CronJob, now: Timestamp, schedule: &cron::Schedule, zone: &TimeZone) -> Option<Duration> {
    let from = match most_recent_schedule_time(cj, now, schedule, zone, false) {
        Err(_) => now,
        Ok((earliest, None, Missed::None)) => earliest,
        Ok((_, None, _)) => now,
        Ok((_, Some(t), _)) => t,
    };
    let next = schedule.next(from, zone)? + NEXT_SCHEDULE_DELTA;
    Some(Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Suspended,
    /// No scheduled time is due.
    NothingDue,
    /// The due time is older than `startingDeadlineSeconds` allows.
    TooLate(Timestamp),
    /// A Job for the due time was already started.
    AlreadyStarted(Timestamp),
    /// Forbid, and a Job is still active.
    Forbidden(Timestamp),
    /// Start a Job for `scheduled`, with Replace deleting the active ones first.
    Start {
        scheduled: Timestamp,
        replace: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub decision: Decision,
    pub requeue: Option<Duration>,
    pub missed: Missed,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid timeZone: {0:?}: unknown time zone {0}")]
    UnknownTimeZone(String),
    #[error("unparseable schedule: {0:?} : {1}")]
    Unparseable(String, String),
    #[error("invalid schedule: {0} : {1}")]
    Invalid(String, String),
}

/// The zone the schedule is read in: a `TZ=` prefix, else `spec.timeZone`, else the
/// controller's local zone (as kube-controller-manager's).
fn zone_for(cj: &CronJob, schedule: &cron::Schedule, local: &TimeZone) -> Result<TimeZone, PlanError> {
    if let Some(zone) = &schedule.zone {
        return Ok(zone.clone());
    }
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        Some(name) => cron::load_location(name).map_err(|_| PlanError::UnknownTimeZone(name.into())),
        None => Ok(local.clone()),
    }
}

pub fn job_name(cj: &CronJob, scheduled: Timestamp) -> String {
    format!("{}-{}", cj.name_any(), scheduled.as_second() / 60)
}

fn active_refs(cj: &CronJob) -> &[ObjectReference] {
    cj.status.as_ref().and_then(|s| s.active.as_deref()).unwrap_or_default()
}

/// What the CronJob should do at `now`, given its status (upstream's syncCronJob after the
/// active list is reconciled).
pub fn plan(cj: &CronJob, now: Timestamp, local: &TimeZone) -> Result<Plan, PlanError> {
    let spec = cj.spec.clone().unwrap_or_default();
    if let Some(name) = spec.time_zone.as_deref() {
        cron::load_location(name).map_err(|_| PlanError::UnknownTimeZone(name.into()))?;
    }
    if spec.suspend == Some(true) {
        return Ok(Plan { decision: Decision::Suspended, requeue: None, missed: Missed::None });
    }
    let schedule = cron::parse(&spec.schedule).map_err(|e| PlanError::Unparseable(spec.schedule.clone(), e.to_string()))?;
    let zone = zone_for(cj, &schedule, local)?;
    let requeue = next_schedule_delay(cj, now, &schedule, &zone);
    let (scheduled, missed) = match most_recent_schedule_time(cj, now, &schedule, &zone, true) {
        Ok((_, Some(t), missed)) if t <= now => (t, missed),
        Ok(_) => return Ok(Plan { decision: Decision::NothingDue, requeue, missed: Missed::None }),
        Err(e) => return Err(PlanError::Invalid(spec.schedule.clone(), e)),
    };
    let plan = |decision| Ok(Plan { decision, requeue, missed });
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled + SignedDuration::from_secs(deadline) < now
    {
        return plan(Decision::TooLate(scheduled));
    }
    let name = job_name(cj, scheduled);
    let ns = cj.namespace();
    let last = cj.status.as_ref().and_then(|s| s.last_schedule_time.as_ref()).map(|t| t.0);
    if active_refs(cj).iter().any(|r| r.name.as_deref() == Some(name.as_str()) && r.namespace == ns) || last == Some(scheduled) {
        return plan(Decision::AlreadyStarted(scheduled));
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active_refs(cj).is_empty() {
        return plan(Decision::Forbidden(scheduled));
    }
    plan(Decision::Start { scheduled, replace: policy == "Replace" })
}

/// Go's RFC 3339 without fractions: `Z` for a zero offset.
fn rfc3339(at: Timestamp, zone: &TimeZone) -> String {
    let zoned = at.to_zoned(zone.clone());
    if zoned.offset().seconds() == 0 { zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string() } else { zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string() }
}

/// The Job for one scheduled time: the template's labels, annotations and spec, the scheduled
/// time in `spec.timeZone` (UTC without one), and the CronJob as controller.
pub fn job_from_template(cj: &CronJob, scheduled: Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let zone = spec.time_zone.as_deref().and_then(|n| cron::load_location(n).ok()).unwrap_or(TimeZone::UTC);
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339(scheduled, &zone));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj, scheduled)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.name_any(),
                uid: cj.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The controller.

struct Ctx {
    client: Client,
    cronjobs: Cache<CronJob>,
    jobs: Cache<Job>,
    queue: WorkQueue<Key>,
    /// The wake-up already pending per CronJob, so repeated syncs do not stack timers.
    wakeups: Mutex<HashMap<Key, Timestamp>>,
    local: TimeZone,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn key_of<K: kube::Resource>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn controller_of(job: &Job) -> Option<&OwnerReference> {
    job.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let local = TimeZone::system();
    let q = queue.clone();
    let zone = local.clone();
    let cronjobs = Cache::<CronJob>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            let Some(cj) = new.or(old) else { return };
            let key = key_of(cj);
            // A new schedule is first due at its next time; anything else is looked at now.
            if let (Some(old), Some(new)) = (old, new) {
                let (a, b) = (old.spec.clone().unwrap_or_default(), new.spec.clone().unwrap_or_default());
                if a.schedule != b.schedule || a.time_zone != b.time_zone {
                    if let Ok(schedule) = cron::parse(&b.schedule)
                        && let Ok(zone) = zone_for(new, &schedule, &zone)
                        && let Some(delay) = next_schedule_delay(new, Timestamp::now(), &schedule, &zone)
                    {
                        q.add_after(key, delay);
                    }
                    return;
                }
            }
            q.add(key);
        }),
    );
    let q = queue.clone();
    let for_jobs = cronjobs.clone();
    let jobs = Cache::<Job>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for job in [old, new].into_iter().flatten() {
                let ns = job.namespace().unwrap_or_default();
                if let Some(owner) = controller_of(job).filter(|o| o.kind == "CronJob")
                    && for_jobs.get(&ns, &owner.name).is_some_and(|cj| cj.uid().as_deref() == Some(owner.uid.as_str()))
                {
                    q.add((ns, owner.name.clone()));
                }
            }
        }),
    );
    cronjobs.synced().await;
    jobs.synced().await;
    let recorder = Recorder::new(client.clone(), COMPONENT);
    let ctx = Arc::new(Ctx { client, cronjobs, jobs, queue: queue.clone(), wakeups: Mutex::new(HashMap::new()), local, recorder });
    run_workers(queue, rx, 4, move |key| {
        let ctx = ctx.clone();
        async move {
            match sync(&ctx, &key, Timestamp::now()).await {
                Ok(Some(delay)) => wake_after(&ctx, key, delay),
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, namespace = %key.0, name = %key.1, "cronjob sync failed; retrying");
                    ctx.queue.add_after(key, Duration::from_secs(1));
                }
            }
        }
    })
    .await;
}

fn wake_after(ctx: &Ctx, key: Key, delay: Duration) {
    let now = Timestamp::now();
    let at = now + SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
    {
        let mut pending = ctx.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(&key).is_some_and(|p| *p > now && *p <= at) {
            return;
        }
        if pending.len() > 4096 {
            pending.retain(|_, p| *p > now);
        }
        pending.insert(key.clone(), at);
    }
    ctx.queue.add_after(key, delay);
}

fn event(ctx: &Ctx, cj: &CronJob, warning: bool, reason: &str, message: String) {
    if warning {
        ctx.recorder.warning(cj, reason, message);
    } else {
        ctx.recorder.normal(cj, reason, message);
    }
}

fn finished_type(job: &Job) -> Option<&str> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True").map(|c| c.type_.as_str())
}

fn in_active(cj: &CronJob, uid: &str) -> bool {
    active_refs(cj).iter().any(|r| r.uid.as_deref() == Some(uid))
}

fn remove_active(cj: &mut CronJob, uid: &str) {
    if let Some(status) = cj.status.as_mut() {
        let kept: Vec<ObjectReference> = status.active.iter().flatten().filter(|r| r.uid.as_deref() != Some(uid)).cloned().collect();
        status.active = (!kept.is_empty()).then_some(kept);
    }
}

/// One sync; returns when to look at the CronJob again.
async fn sync(ctx: &Ctx, key: &Key, now: Timestamp) -> Result<Option<Duration>, SyncError> {
    let Some(shared) = ctx.cronjobs.get(&key.0, &key.1) else {
        ctx.wakeups.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        return Ok(None);
    };
    let jobs: Vec<Arc<Job>> = ctx.jobs.in_namespace(&key.0).into_iter().filter(|j| controller_of(j).is_some_and(|o| o.kind == "CronJob" && o.name == key.1)).collect();
    let mut cj = (*shared).clone();
    let cleaned = cleanup_finished_jobs(ctx, &mut cj, &jobs).await;
    let (requeue, changed, result) = sync_cronjob(ctx, &mut cj, &jobs, now).await;
    if let Err(error) = &result {
        tracing::debug!(%error, namespace = %key.0, name = %key.1, "reconciling cronjob failed");
    }
    if cleaned || changed {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &key.0);
        api.replace_status(&key.1, &PostParams::default(), &cj).await?;
    }
    match requeue {
        Some(delay) => Ok(Some(delay)),
        None => result.map(|()| None),
    }
}

/// Reconciles `status.active` with the Jobs, then starts a Job if one is due. Returns the
/// requeue delay, whether the status changed, and the error that should cause a retry.
async fn sync_cronjob(ctx: &Ctx, cj: &mut CronJob, jobs: &[Arc<Job>], now: Timestamp) -> (Option<Duration>, bool, Result<(), SyncError>) {
    let mut changed = false;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &cj.namespace().unwrap_or_default());
    for job in jobs {
        let uid = job.uid().unwrap_or_default();
        let found = in_active(cj, &uid);
        if !found && !is_finished(job) {
            // The cache may lag behind this controller's own status write.
            let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &cj.namespace().unwrap_or_default());
            match api.get(&cj.name_any()).await {
                Ok(fresh) if in_active(&fresh, &uid) => {
                    *cj = fresh;
                    continue;
                }
                Ok(_) => event(ctx, cj, true, "UnexpectedJob", format!("Saw a job that the controller did not create or forgot: {}", job.name_any())),
                Err(e) => return (None, changed, Err(e.into())),
            }
        } else if found && is_finished(job) {
            remove_active(cj, &uid);
            event(ctx, cj, false, "SawCompletedJob", format!("Saw completed job: {}, status: {}", job.name_any(), finished_type(job).unwrap_or("")));
            changed = true;
        } else if finished_type(job) == Some("Complete") {
            // A Job need not be active to count as the latest success.
            let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
            let status = cj.status.get_or_insert_with(Default::default);
            if let Some(at) = completed
                && status.last_successful_time.as_ref().is_none_or(|last| at.0 > last.0)
            {
                status.last_successful_time = Some(at);
                changed = true;
            }
        }
    }
    // An active Job that is gone (confirmed by the API, not just the cache) no longer blocks.
    let known: Vec<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    for r in active_refs(cj).to_vec() {
        if r.uid.as_ref().is_some_and(|u| known.contains(u)) {
            continue;
        }
        let name = r.name.clone().unwrap_or_default();
        match jobs_api.get_opt(&name).await {
            Ok(None) => {
                event(ctx, cj, false, "MissingJob", format!("Active job went missing: {name}"));
                remove_active(cj, r.uid.as_deref().unwrap_or_default());
                changed = true;
            }
            Ok(Some(_)) => {}
            Err(e) => return (None, changed, Err(e.into())),
        }
    }
    if cj.metadata.deletion_timestamp.is_some() {
        return (None, changed, Ok(()));
    }
    let spec = cj.spec.clone().unwrap_or_default();
    let planned = plan(cj, now, &ctx.local);
    // Upstream warns when it parses such a schedule: after the zone and suspend checks.
    let parsed = match &planned {
        Ok(p) => p.decision != Decision::Suspended,
        Err(e) => !matches!(e, PlanError::UnknownTimeZone(_)),
    };
    if parsed && spec.schedule.contains("TZ") {
        event(
            ctx,
            cj,
            true,
            "UnsupportedSchedule",
            format!("CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details", spec.schedule),
        );
    }
    let plan = match planned {
        Ok(plan) => plan,
        Err(error) => {
            let reason = match &error {
                PlanError::UnknownTimeZone(_) => "UnknownTimeZone",
                PlanError::Unparseable(..) => "UnparseableSchedule",
                PlanError::Invalid(..) => "InvalidSchedule",
            };
            tracing::info!(%error, cronjob = %cj.name_any(), "not scheduling cronjob");
            event(ctx, cj, true, reason, error.to_string());
            return (None, changed, Ok(()));
        }
    };
    if plan.missed == Missed::Many {
        tracing::info!(namespace = %cj.namespace().unwrap_or_default(), cronjob = %cj.name_any(), "too many missed start times");
        event(ctx, cj, true, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into());
    }
    let requeue = plan.requeue;
    let (scheduled, replace) = match plan.decision {
        Decision::Start { scheduled, replace } => (scheduled, replace),
        Decision::TooLate(at) => {
            event(ctx, cj, true, "MissSchedule", format!("Missed scheduled time to start a job: {}", at.strftime("%a, %d %b %Y %H:%M:%S +0000")));
            return (requeue, changed, Ok(()));
        }
        Decision::Forbidden(_) => {
            event(ctx, cj, false, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid".into());
            return (requeue, changed, Ok(()));
        }
        Decision::Suspended | Decision::NothingDue | Decision::AlreadyStarted(_) => return (requeue, changed, Ok(())),
    };
    if replace {
        for r in active_refs(cj).to_vec() {
            let name = r.name.clone().unwrap_or_default();
            let job = match jobs_api.get(&name).await {
                Ok(job) => job,
                Err(e) => {
                    event(ctx, cj, true, "FailedGet", format!("Get job: {e}"));
                    return (None, changed, Err(e.into()));
                }
            };
            if !delete_job(ctx, cj, &job).await {
                return (None, changed, Err(SyncError::Other(format!("could not replace job {}/{}", job.namespace().unwrap_or_default(), job.name_any()))));
            }
            changed = true;
        }
    }
    let request = job_from_template(cj, scheduled);
    let created = match jobs_api.create(&PostParams::default(), &request).await {
        Ok(job) => {
            event(ctx, cj, false, "SuccessfulCreate", format!("Created job {}", job.name_any()));
            job
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Created before, and the status write after it was lost: record it now if it is ours.
            let job = match jobs_api.get(&request.name_any()).await {
                Ok(job) => job,
                Err(e) => return (None, changed, Err(e.into())),
            };
            let ours = controller_of(&job).is_some_and(|o| Some(o.uid.as_str()) == cj.metadata.uid.as_deref());
            if !ours || in_active(cj, &job.uid().unwrap_or_default()) {
                return (requeue, changed, Ok(()));
            }
            tracing::info!(job = %job.name_any(), "job already exists");
            job
        }
        Err(e) => {
            if !matches!(&e, kube::Error::Api(s) if s.message.contains("is being terminated")) {
                event(ctx, cj, true, "FailedCreate", format!("Error creating job: {e}"));
            }
            return (None, changed, Err(e.into()));
        }
    };
    let status = cj.status.get_or_insert_with(Default::default);
    status.active.get_or_insert_with(Vec::new).push(reference(&created, "batch/v1", "Job"));
    status.last_schedule_time = Some(Time(scheduled));
    (requeue, true, Ok(()))
}

/// Deletes a Job (its pods follow in the background) and drops it from the active list.
async fn delete_job(ctx: &Ctx, cj: &mut CronJob, job: &Job) -> bool {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match api.delete(&job.name_any(), &params).await {
        Ok(_) => {}
        Err(e) if not_found(&e) => {}
        Err(e) => {
            event(ctx, cj, true, "FailedDelete", format!("Deleted job: {e}"));
            tracing::warn!(error = %e, job = %job.name_any(), "deleting job of cronjob failed");
            return false;
        }
    }
    remove_active(cj, &job.uid().unwrap_or_default());
    event(ctx, cj, false, "SuccessfulDelete", format!("Deleted job {}", job.name_any()));
    true
}

/// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit`/`failedJobsHistoryLimit`.
async fn cleanup_finished_jobs(ctx: &Ctx, cj: &mut CronJob, jobs: &[Arc<Job>]) -> bool {
    let spec = cj.spec.clone().unwrap_or_default();
    let mut changed = false;
    for (kind, limit) in [("Complete", spec.successful_jobs_history_limit), ("Failed", spec.failed_jobs_history_limit)] {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Arc<Job>> = jobs.iter().filter(|j| finished_type(j) == Some(kind)).collect();
        let excess = finished.len().saturating_sub(limit.max(0) as usize);
        if excess == 0 {
            continue;
        }
        // Oldest start first; never-started Jobs last; names break ties.
        finished.sort_by_key(|j| {
            let start = j.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            (start.is_none(), start, j.name_any())
        });
        for job in finished.into_iter().take(excess) {
            if delete_job(ctx, cj, job).await {
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, CronJobStatus, JobTemplateSpec};
    use std::collections::BTreeMap;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next_in(spec: &str, after: &str, zone: &str) -> String {
        let zone = TimeZone::get(zone).unwrap();
        let schedule = cron::parse(spec).unwrap();
        schedule.next(ts(after), &zone).unwrap().to_string()
    }

    #[test]
    fn parses_fields_ranges_lists_steps_and_names() {
        let utc = "UTC";
        assert_eq!(next_in("* * * * *", "2024-05-01T10:00:30Z", utc), "2024-05-01T10:01:00Z");
        assert_eq!(next_in("*/15 * * * *", "2024-05-01T10:01:00Z", utc), "2024-05-01T10:15:00Z");
        assert_eq!(next_in("5/20 * * * *", "2024-05-01T10:26:00Z", utc), "2024-05-01T10:45:00Z");
        assert_eq!(next_in("0 9-17/4 * * *", "2024-05-01T13:00:00Z", utc), "2024-05-01T17:00:00Z");
        assert_eq!(next_in("0 0 1,15 * *", "2024-05-02T00:00:00Z", utc), "2024-05-15T00:00:00Z");
        // 2024-05-01 is a Wednesday.
        assert_eq!(next_in("30 8 * * MON-FRI", "2024-05-03T09:00:00Z", utc), "2024-05-06T08:30:00Z");
        assert_eq!(next_in("0 0 ? JAN,jul SUN", "2024-05-01T00:00:00Z", utc), "2024-07-07T00:00:00Z");
        assert_eq!(next_in("0 12 29 feb *", "2024-03-01T00:00:00Z", utc), "2028-02-29T12:00:00Z");
        // Neither day field a star: either matches (the 13th, or any Friday).
        assert_eq!(next_in("0 0 13 * 5", "2024-05-01T00:00:00Z", utc), "2024-05-03T00:00:00Z");
        assert_eq!(next_in("0 0 13 * 5", "2024-05-10T00:00:00Z", utc), "2024-05-13T00:00:00Z");
        // With a star day-of-week, only the day of month counts.
        assert_eq!(next_in("0 0 13 * *", "2024-05-01T00:00:00Z", utc), "2024-05-13T00:00:00Z");
    }

    #[test]
    fn descriptors_and_every() {
        let utc = "UTC";
        assert_eq!(next_in("@hourly", "2024-05-01T10:20:00Z", utc), "2024-05-01T11:00:00Z");
        assert_eq!(next_in("@daily", "2024-05-01T10:20:00Z", utc), "2024-05-02T00:00:00Z");
        assert_eq!(next_in("@midnight", "2024-05-01T10:20:00Z", utc), "2024-05-02T00:00:00Z");
        assert_eq!(next_in("@weekly", "2024-05-01T10:20:00Z", utc), "2024-05-05T00:00:00Z");
        assert_eq!(next_in("@monthly", "2024-05-01T10:20:00Z", utc), "2024-06-01T00:00:00Z");
        assert_eq!(next_in("@yearly", "2024-05-01T10:20:00Z", utc), "2025-01-01T00:00:00Z");
        assert_eq!(next_in("@annually", "2024-05-01T10:20:00Z", utc), "2025-01-01T00:00:00Z");
        assert_eq!(next_in("@every 1h30m", "2024-05-01T10:20:00.5Z", utc), "2024-05-01T11:50:00Z");
        assert_eq!(next_in("@every 200ms", "2024-05-01T10:20:00Z", utc), "2024-05-01T10:20:01Z");
        assert_eq!(cron::parse_go_duration("1.5h"), Ok(SignedDuration::from_mins(90)));
    }

    #[test]
    fn rejects_what_upstream_rejects() {
        let e = |s: &str| cron::parse(s).unwrap_err().to_string();
        assert_eq!(e(""), "empty spec string");
        assert_eq!(e("* * * *"), "expected exactly 5 fields, found 4: [* * * *]");
        assert_eq!(e("61 * * * *"), "end of range (61) above maximum (59): 61");
        assert_eq!(e("* * 0 * *"), "beginning of range (0) below minimum (1): 0");
        assert_eq!(e("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(e("5-1 * * * *"), "beginning of range (5) beyond end of range (1): 5-1");
        assert_eq!(e("*/0 * * * *"), "step of range should be a positive number: */0");
        assert_eq!(e("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(e("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(e("x * * * *"), "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax");
        assert_eq!(e("@fortnightly"), "unrecognized descriptor: @fortnightly");
        assert!(e("@every soon").starts_with("failed to parse duration @every soon"));
        assert!(e("TZ=Mars/Olympus * * * * *").starts_with("provided bad location Mars/Olympus"));
        // A step larger than the range keeps only its start.
        assert_eq!(next_in("*/61 * * * *", "2024-05-01T10:20:00Z", "UTC"), "2024-05-01T11:00:00Z");
        // February 30th never comes.
        let never = cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(never.next(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 09:00 in Berlin is 08:00Z in winter and 07:00Z in summer.
        assert_eq!(next_in("0 9 * * *", "2024-01-10T12:00:00Z", "Europe/Berlin"), "2024-01-11T08:00:00Z");
        assert_eq!(next_in("0 9 * * *", "2024-07-10T12:00:00Z", "Europe/Berlin"), "2024-07-11T07:00:00Z");
        // Spring forward (New York, 2024-03-10): 02:30 does not exist that day and is skipped.
        assert_eq!(next_in("30 2 * * *", "2024-03-10T05:00:00Z", "America/New_York"), "2024-03-11T06:30:00Z");
        // Fall back (2024-11-03): 01:30 happens twice, and runs twice.
        assert_eq!(next_in("30 1 * * *", "2024-11-03T04:00:00Z", "America/New_York"), "2024-11-03T05:30:00Z");
        assert_eq!(next_in("30 1 * * *", "2024-11-03T05:30:00Z", "America/New_York"), "2024-11-03T06:30:00Z");
        assert_eq!(next_in("30 1 * * *", "2024-11-03T06:30:00Z", "America/New_York"), "2024-11-04T06:30:00Z");
        // A TZ= prefix carries its own zone.
        let s = cron::parse("CRON_TZ=Asia/Tokyo 0 9 * * *").unwrap();
        let zone = s.zone.clone().unwrap();
        assert_eq!(s.next(ts("2024-05-01T00:00:00Z"), &zone).unwrap().to_string(), "2024-05-02T00:00:00Z");
    }

    fn cronjob(schedule: &str, created: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta { name: Some("nightly".into()), namespace: Some("ns".into()), uid: Some("cj-uid".into()), creation_timestamp: Some(Time(ts(created))), ..Default::default() },
            spec: Some(CronJobSpec { schedule: schedule.into(), ..Default::default() }),
            status: None,
        }
    }

    fn decision(cj: &CronJob, now: &str) -> Decision {
        plan(cj, ts(now), &TimeZone::UTC).unwrap().decision
    }

    #[test]
    fn plans_the_due_time_with_an_injected_now() {
        let mut cj = cronjob("*/5 * * * *", "2024-05-01T10:01:00Z");
        assert_eq!(decision(&cj, "2024-05-01T10:04:00Z"), Decision::NothingDue);
        let p = plan(&cj, ts("2024-05-01T10:04:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.requeue, Some(Duration::from_millis(60_100)));
        assert_eq!(decision(&cj, "2024-05-01T10:07:00Z"), Decision::Start { scheduled: ts("2024-05-01T10:05:00Z"), replace: false });
        // Several missed: only the latest runs.
        assert_eq!(decision(&cj, "2024-05-01T10:31:00Z"), Decision::Start { scheduled: ts("2024-05-01T10:30:00Z"), replace: false });
        // Once started, the same time is not started again.
        cj.status = Some(CronJobStatus { last_schedule_time: Some(Time(ts("2024-05-01T10:30:00Z"))), ..Default::default() });
        assert_eq!(decision(&cj, "2024-05-01T10:31:00Z"), Decision::NothingDue);
        let p = plan(&cj, ts("2024-05-01T10:31:00Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.requeue, Some(Duration::from_millis(4 * 60_000 + 100)));
        assert_eq!(job_name(&cj, ts("2024-05-01T10:30:00Z")), "nightly-28575990");
    }

    #[test]
    fn more_than_a_hundred_missed_starts_only_the_latest() {
        let cj = cronjob("* * * * *", "2024-05-01T00:00:00Z");
        let p = plan(&cj, ts("2024-05-03T00:00:30Z"), &TimeZone::UTC).unwrap();
        assert_eq!(p.missed, Missed::Many);
        assert_eq!(p.decision, Decision::Start { scheduled: ts("2024-05-03T00:00:00Z"), replace: false });
        let few = plan(&cj, ts("2024-05-01T00:10:30Z"), &TimeZone::UTC).unwrap();
        assert_eq!(few.missed, Missed::Few);
    }

    #[test]
    fn starting_deadline_concurrency_and_suspend() {
        let mut cj = cronjob("0 * * * *", "2024-05-01T09:30:00Z");
        cj.spec.as_mut().unwrap().starting_deadline_seconds = Some(60);
        // The 10:00 run is more than 60 s late at 10:05; the deadline also bounds the search.
        assert_eq!(decision(&cj, "2024-05-01T10:05:00Z"), Decision::NothingDue);
        assert_eq!(decision(&cj, "2024-05-01T10:00:30Z"), Decision::Start { scheduled: ts("2024-05-01T10:00:00Z"), replace: false });
        cj.spec.as_mut().unwrap().starting_deadline_seconds = None;

        let active = ObjectReference { name: Some("nightly-1".into()), namespace: Some("ns".into()), uid: Some("j1".into()), ..Default::default() };
        cj.status = Some(CronJobStatus { active: Some(vec![active]), ..Default::default() });
        cj.spec.as_mut().unwrap().concurrency_policy = Some("Forbid".into());
        assert_eq!(decision(&cj, "2024-05-01T10:00:30Z"), Decision::Forbidden(ts("2024-05-01T10:00:00Z")));
        cj.spec.as_mut().unwrap().concurrency_policy = Some("Replace".into());
        assert_eq!(decision(&cj, "2024-05-01T10:00:30Z"), Decision::Start { scheduled: ts("2024-05-01T10:00:00Z"), replace: true });
        cj.spec.as_mut().unwrap().suspend = Some(true);
        assert_eq!(plan(&cj, ts("2024-05-01T10:00:30Z"), &TimeZone::UTC).unwrap(), Plan { decision: Decision::Suspended, requeue: None, missed: Missed::None });
    }

    #[test]
    fn time_zone_field_and_bad_schedules() {
        let mut cj = cronjob("0 9 * * *", "2024-07-01T00:00:00Z");
        cj.spec.as_mut().unwrap().time_zone = Some("Europe/Berlin".into());
        assert_eq!(decision(&cj, "2024-07-01T07:00:05Z"), Decision::Start { scheduled: ts("2024-07-01T07:00:00Z"), replace: false });
        assert_eq!(decision(&cj, "2024-07-01T06:59:00Z"), Decision::NothingDue);
        let job = job_from_template(&cj, ts("2024-07-01T07:00:00Z"));
        assert_eq!(job.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP], "2024-07-01T09:00:00+02:00");

        cj.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus".into());
        assert_eq!(plan(&cj, ts("2024-07-01T07:00:05Z"), &TimeZone::UTC), Err(PlanError::UnknownTimeZone("Mars/Olympus".into())));
        let bad = cronjob("every day", "2024-07-01T00:00:00Z");
        assert!(matches!(plan(&bad, ts("2024-07-01T07:00:05Z"), &TimeZone::UTC), Err(PlanError::Unparseable(..))));
        let never = cronjob("0 0 31 2 *", "2024-07-01T00:00:00Z");
        assert!(matches!(plan(&never, ts("2024-07-01T07:00:05Z"), &TimeZone::UTC), Err(PlanError::Invalid(..))));
    }

    #[test]
    fn jobs_from_the_template() {
        let mut cj = cronjob("* * * * *", "2024-05-01T00:00:00Z");
        cj.spec.as_mut().unwrap().job_template = JobTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "report".to_string())])),
                annotations: Some(BTreeMap::from([("note".to_string(), "x".to_string())])),
                ..Default::default()
            }),
            spec: Some(Default::default()),
        };
        let job = job_from_template(&cj, ts("2024-05-01T10:30:00Z"));
        assert_eq!(job.metadata.name.as_deref(), Some("nightly-28575990"));
        assert_eq!(job.metadata.labels.as_ref().unwrap()["app"], "report");
        let annotations = job.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["note"], "x");
        assert_eq!(annotations[SCHEDULED_TIMESTAMP], "2024-05-01T10:30:00Z");
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("CronJob", "cj-uid", Some(true)));
    }
}
