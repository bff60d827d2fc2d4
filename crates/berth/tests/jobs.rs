//! Jobs and CronJobs driven with the real kubectl. Mostly there are no nodes here, so the tests
//! play the kubelet: they write a pod's final phase (and its containers' exit codes) through the
//! status subresource, as a kubelet would. A CronJob left to its schedule runs on simulated nodes.

use std::time::Duration;

use serde_json::{Value, json};
use testsupport::{Server, SimNodes, eventually};

fn server() -> Server {
    Server::start(env!("CARGO_BIN_EXE_berth"))
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    assert!(eventually(Duration::from_secs(40), || check().then_some(())).is_some(), "timed out waiting for {what}");
}

fn job_pods(s: &Server, job: &str) -> Vec<Value> {
    s.get_json(&["pods", "-l", &format!("batch.kubernetes.io/job-name={job}")])["items"].as_array().cloned().unwrap_or_default()
}

/// Pods still running for the Job: not finished, not being deleted.
fn running_pods(s: &Server, job: &str) -> Vec<Value> {
    job_pods(s, job).into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none() && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).collect()
}

fn name(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

/// Plays the kubelet: the pod's only container ended with `exit_code` long ago.
fn finish_pod(s: &Server, pod: &str, exit_code: i32) {
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    let status = json!({"status": {
        "phase": phase,
        "containerStatuses": [{
            "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                                     "startedAt": "2020-01-01T00:00:00Z", "finishedAt": "2020-01-01T00:00:01Z"}}
        }]
    }});
    s.ok(&["patch", "pod", pod, "--subresource=status", "--type=merge", "-p", &status.to_string()]);
}

fn job(s: &Server, name: &str) -> Value {
    s.get_json(&["job", name])
}

fn condition<'a>(job: &'a Value, type_: &str) -> Option<&'a Value> {
    job["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn has_condition(job: &Value, type_: &str, reason: &str) -> bool {
    condition(job, type_).is_some_and(|c| c["status"] == "True" && c["reason"] == reason)
}

fn has_tracking_finalizer(pod: &Value) -> bool {
    pod["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == "batch.kubernetes.io/job-tracking"))
}

const TEMPLATE: &str = "template: {spec: {restartPolicy: Never, containers: [{name: main, image: busybox}]}}";

fn create_job(s: &Server, name: &str, spec: &str) {
    let manifest = format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  {TEMPLATE}\n{spec}");
    s.ok_stdin(&["create", "-f", "-"], &manifest);
}

#[test]
fn jobs_run_to_completion() {
    let s = server();

    // completions 3, parallelism 2: two pods at a time, a third after two succeeded.
    create_job(&s, "count", "  completions: 3\n  parallelism: 2\n");
    wait_for("two running pods", || running_pods(&s, "count").len() == 2);
    let uid = job(&s, "count")["metadata"]["uid"].as_str().unwrap().to_string();
    for pod in running_pods(&s, "count") {
        let meta = &pod["metadata"];
        assert!(name(&pod).starts_with("count-"), "{pod}");
        assert_eq!(meta["generateName"], "count-");
        assert_eq!(meta["labels"]["batch.kubernetes.io/job-name"], "count");
        assert_eq!(meta["labels"]["job-name"], "count");
        assert_eq!(meta["labels"]["batch.kubernetes.io/controller-uid"], uid.as_str());
        assert_eq!(meta["labels"]["controller-uid"], uid.as_str());
        let owner = &meta["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["name"].as_str(), owner["controller"].as_bool()), (Some("Job"), Some("count"), Some(true)));
        assert!(has_tracking_finalizer(&pod), "{pod}");
    }
    wait_for("status.active 2 and startTime", || {
        let j = job(&s, "count");
        j["status"]["active"] == 2 && j["status"]["startTime"].is_string()
    });
    for pod in running_pods(&s, "count") {
        finish_pod(&s, &name(&pod), 0);
    }
    wait_for("succeeded 2, a third pod", || job(&s, "count")["status"]["succeeded"] == 2 && running_pods(&s, "count").len() == 1);
    wait_for("counted pods lose the finalizer", || job_pods(&s, "count").iter().filter(|p| p["status"]["phase"] == "Succeeded").all(|p| !has_tracking_finalizer(p)));
    let last = name(&running_pods(&s, "count")[0]);
    finish_pod(&s, &last, 0);
    s.ok(&["wait", "--for=condition=complete", "job/count", "--timeout=40s"]);
    let done = job(&s, "count");
    let status = &done["status"];
    assert_eq!(status["succeeded"], 3, "{done}");
    assert!(status["completionTime"].is_string(), "{done}");
    assert!(status.get("active").is_none_or(|a| a == 0), "{done}");
    assert_eq!(status["uncountedTerminatedPods"], json!({}), "{done}");
    assert!(has_condition(&done, "SuccessCriteriaMet", "CompletionsReached") && has_condition(&done, "Complete", "CompletionsReached"), "{done}");
    assert!(job_pods(&s, "count").iter().all(|p| !has_tracking_finalizer(p)));
    assert_eq!(job_pods(&s, "count").len(), 3, "no extra pods");
    let table = s.ok(&["get", "job", "count"]);
    assert!(table.contains("Complete") && table.contains("3/3"), "{table}");
    wait_for("a Completed event", || s.ok(&["get", "events", "--field-selector", "involvedObject.name=count,reason=Completed"]).contains("Job completed"));

    // Indexed: each pod carries its index; completedIndexes reads like "0,2" or "0-2".
    create_job(&s, "idx", "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n");
    wait_for("three indexed pods", || running_pods(&s, "idx").len() == 3);
    let mut by_index = std::collections::BTreeMap::new();
    for pod in running_pods(&s, "idx") {
        let meta = &pod["metadata"];
        let index = meta["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap().to_string();
        assert_eq!(meta["labels"]["batch.kubernetes.io/job-completion-index"].as_str(), Some(index.as_str()));
        assert!(name(&pod).starts_with(&format!("idx-{index}-")), "{pod}");
        assert_eq!(pod["spec"]["hostname"].as_str(), Some(format!("idx-{index}").as_str()));
        let env = &pod["spec"]["containers"][0]["env"][0];
        assert_eq!(env["name"], "JOB_COMPLETION_INDEX");
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['batch.kubernetes.io/job-completion-index']");
        by_index.insert(index, name(&pod));
    }
    assert_eq!(by_index.keys().cloned().collect::<Vec<_>>(), ["0", "1", "2"]);
    finish_pod(&s, &by_index["0"], 0);
    finish_pod(&s, &by_index["2"], 0);
    wait_for("completedIndexes 0,2", || job(&s, "idx")["status"]["completedIndexes"] == "0,2");
    finish_pod(&s, &by_index["1"], 0);
    s.ok(&["wait", "--for=condition=complete", "job/idx", "--timeout=40s"]);
    let done = job(&s, "idx");
    assert_eq!(done["status"]["completedIndexes"], "0-2", "{done}");
    assert_eq!(done["status"]["succeeded"], 3, "{done}");

    // No completions: a work queue. After the first success nothing new starts, and the Job
    // completes once the others have finished.
    create_job(
        &s,
        "queue",
        "  parallelism: 2
",
    );
    wait_for("two workers", || running_pods(&s, "queue").len() == 2);
    let workers: Vec<String> = running_pods(&s, "queue").iter().map(name).collect();
    finish_pod(&s, &workers[0], 0);
    wait_for("one success counted", || job(&s, "queue")["status"]["succeeded"] == 1);
    let j = job(&s, "queue");
    assert!(condition(&j, "Complete").is_none() && running_pods(&s, "queue").len() == 1 && job_pods(&s, "queue").len() == 2, "{j}");
    finish_pod(&s, &workers[1], 0);
    s.ok(&["wait", "--for=condition=complete", "job/queue", "--timeout=40s"]);
    assert_eq!(job(&s, "queue")["status"]["succeeded"], 2);
}

#[test]
fn jobs_fail_on_backoff_limit_deadline_and_failure_policy() {
    let s = server();

    // backoffLimit 1: the first failure is replaced, the second fails the Job.
    create_job(&s, "flaky", "  backoffLimit: 1\n");
    wait_for("a pod", || running_pods(&s, "flaky").len() == 1);
    let first = name(&running_pods(&s, "flaky")[0]);
    finish_pod(&s, &first, 1);
    wait_for("a replacement pod", || running_pods(&s, "flaky").iter().any(|p| name(p) != first));
    assert_eq!(job(&s, "flaky")["status"]["failed"], 1);
    let second = name(&running_pods(&s, "flaky")[0]);
    finish_pod(&s, &second, 1);
    s.ok(&["wait", "--for=condition=failed", "job/flaky", "--timeout=40s"]);
    let failed = job(&s, "flaky");
    assert!(has_condition(&failed, "Failed", "BackoffLimitExceeded"), "{failed}");
    assert!(has_condition(&failed, "FailureTarget", "BackoffLimitExceeded"), "{failed}");
    assert_eq!(condition(&failed, "Failed").unwrap()["message"], "Job has reached the specified backoff limit");
    assert_eq!(failed["status"]["failed"], 2, "{failed}");
    assert!(failed["status"].get("completionTime").is_none(), "{failed}");
    assert_eq!(job_pods(&s, "flaky").len(), 2, "no third pod");

    // activeDeadlineSeconds: the running pod is deleted and the Job fails.
    create_job(&s, "slow", "  activeDeadlineSeconds: 2\n");
    wait_for("Failed with DeadlineExceeded", || has_condition(&job(&s, "slow"), "Failed", "DeadlineExceeded"));
    wait_for("the pod gone", || job_pods(&s, "slow").is_empty());
    let slow = job(&s, "slow");
    assert_eq!(slow["status"]["failed"], 1, "{slow}");
    assert_eq!(slow["status"]["terminating"], 0, "{slow}");

    // podFailurePolicy: exit code 3 is ignored (replaced, not counted), 42 fails the Job at once.
    create_job(
        &s,
        "policy",
        "  backoffLimit: 6\n  podFailurePolicy:\n    rules:\n    - {action: FailJob, onExitCodes: {operator: In, values: [42]}}\n    - {action: Ignore, onExitCodes: {operator: In, values: [3]}}\n",
    );
    wait_for("a pod", || running_pods(&s, "policy").len() == 1);
    let first = name(&running_pods(&s, "policy")[0]);
    finish_pod(&s, &first, 3);
    wait_for("a replacement", || running_pods(&s, "policy").iter().any(|p| name(p) != first));
    let j = job(&s, "policy");
    assert!(j["status"].get("failed").is_none_or(|f| f == 0), "an ignored failure is not counted: {j}");
    finish_pod(&s, &name(&running_pods(&s, "policy")[0]), 42);
    s.ok(&["wait", "--for=condition=failed", "job/policy", "--timeout=40s"]);
    let j = job(&s, "policy");
    assert!(has_condition(&j, "Failed", "PodFailurePolicy"), "{j}");
    let message = condition(&j, "Failed").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.starts_with("Container main for pod default/policy-") && message.ends_with("failed with exit code 42 matching FailJob rule at index 0"), "{message}");

    // backoffLimitPerIndex 1: an index gets one retry, carrying its failure count; an index that
    // fails again is failed, and the Job fails once every index is decided.
    create_job(
        &s,
        "perindex",
        "  completions: 2
  parallelism: 2
  completionMode: Indexed
  backoffLimitPerIndex: 1
",
    );
    wait_for("two pods", || running_pods(&s, "perindex").len() == 2);
    let index_of = |p: &Value| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap_or_default().to_string();
    let pod_of = |ix: &str| running_pods(&s, "perindex").into_iter().find(|p| index_of(p) == ix);
    let first = name(&pod_of("0").unwrap());
    assert_eq!(pod_of("0").unwrap()["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"], "0");
    finish_pod(&s, &first, 1);
    wait_for("index 0 retried", || pod_of("0").is_some_and(|p| name(&p) != first && p["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"] == "1"));
    finish_pod(&s, &name(&pod_of("0").unwrap()), 1);
    wait_for("index 0 failed", || job(&s, "perindex")["status"]["failedIndexes"] == "0");
    assert!(condition(&job(&s, "perindex"), "Failed").is_none());
    finish_pod(&s, &name(&pod_of("1").unwrap()), 0);
    s.ok(&["wait", "--for=condition=failed", "job/perindex", "--timeout=40s"]);
    let j = job(&s, "perindex");
    assert!(has_condition(&j, "Failed", "FailedIndexes"), "{j}");
    assert_eq!((j["status"]["completedIndexes"].as_str(), j["status"]["failed"].as_i64()), (Some("1"), Some(2)), "{j}");
}

#[test]
fn suspend_resume_and_ttl_after_finished() {
    let s = server();

    create_job(&s, "later", "  suspend: true\n  parallelism: 2\n  completions: 4\n");
    wait_for("Suspended condition", || has_condition(&job(&s, "later"), "Suspended", "JobSuspended"));
    assert!(job_pods(&s, "later").is_empty());
    assert!(job(&s, "later")["status"].get("startTime").is_none());
    s.ok(&["patch", "job", "later", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    wait_for("resumed with two pods", || {
        let j = job(&s, "later");
        condition(&j, "Suspended").is_some_and(|c| c["status"] == "False" && c["reason"] == "JobResumed") && running_pods(&s, "later").len() == 2 && j["status"]["startTime"].is_string()
    });
    s.ok(&["patch", "job", "later", "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    wait_for("suspended again, pods deleted", || has_condition(&job(&s, "later"), "Suspended", "JobSuspended") && job_pods(&s, "later").is_empty());
    let j = job(&s, "later");
    assert!(j["status"].get("failed").is_none_or(|f| f == 0), "pods removed by suspension are not failures: {j}");

    // ttlSecondsAfterFinished 0: deleted as soon as it completes, pods with it.
    create_job(&s, "brief", "  ttlSecondsAfterFinished: 0\n");
    wait_for("a pod", || running_pods(&s, "brief").len() == 1);
    finish_pod(&s, &name(&running_pods(&s, "brief")[0]), 0);
    wait_for("the finished job deleted", || !s.kubectl(&["get", "job", "brief"]).status.success());
    wait_for("its pods deleted", || job_pods(&s, "brief").is_empty());
}

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  timeZone: Europe/Berlin
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata: {labels: {app: report}}
    spec:
      template:
        metadata: {labels: {tier: batch}}
        spec: {restartPolicy: Never, containers: [{name: main, image: busybox}]}
"#;

#[test]
fn cronjob_template_history_and_status() {
    let s = server();
    s.ok_stdin(&["create", "-f", "-"], CRONJOB);
    let table = s.ok(&["get", "cronjob", "nightly"]);
    assert!(table.contains("0 3 * * *"), "{table}");

    // The template path, without waiting for the schedule: kubectl instantiates a Job the
    // CronJob controls, the Job controller runs it, the CronJob records its success.
    s.ok(&["create", "job", "manual-1", "--from=cronjob/nightly"]);
    let j = job(&s, "manual-1");
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob", "{j}");
    assert_eq!(j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual", "{j}");
    assert_eq!(j["metadata"]["labels"]["app"], "report", "{j}");
    wait_for("its pod", || running_pods(&s, "manual-1").len() == 1);
    let pod = &running_pods(&s, "manual-1")[0];
    assert_eq!(pod["metadata"]["labels"]["tier"], "batch", "{pod}");
    finish_pod(&s, &name(pod), 0);
    s.ok(&["wait", "--for=condition=complete", "job/manual-1", "--timeout=40s"]);
    let completed = job(&s, "manual-1")["status"]["completionTime"].clone();
    wait_for("lastSuccessfulTime", || s.get_json(&["cronjob", "nightly"])["status"]["lastSuccessfulTime"] == completed);
    let cj = s.get_json(&["cronjob", "nightly"]);
    assert!(cj["status"].get("active").is_none_or(|a| a.as_array().is_some_and(Vec::is_empty)), "a manual Job is not in the active list: {cj}");
    assert!(cj["status"].get("lastScheduleTime").is_none(), "{cj}");

    // successfulJobsHistoryLimit 1: the older finished Job goes once a newer one finishes.
    s.ok(&["create", "job", "manual-2", "--from=cronjob/nightly"]);
    wait_for("its pod", || running_pods(&s, "manual-2").len() == 1);
    finish_pod(&s, &name(&running_pods(&s, "manual-2")[0]), 0);
    s.ok(&["wait", "--for=condition=complete", "job/manual-2", "--timeout=40s"]);
    wait_for("manual-1 pruned", || !s.kubectl(&["get", "job", "manual-1"]).status.success());
    assert!(s.kubectl(&["get", "job", "manual-2"]).status.success());

    // A schedule the controller cannot parse is reported, not run.
    s.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: bad}\nspec:\n  schedule: \"61 * * * *\"\n  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: main, image: busybox}]}}}}\n",
    );
    wait_for("an UnparseableSchedule event", || s.ok(&["get", "events", "--field-selector", "involvedObject.name=bad"]).contains("UnparseableSchedule"));
}

const EVERY_MINUTE: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: minutely}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: Never, containers: [{name: main, image: busybox}]}
"#;

fn timestamp(value: &Value) -> jiff::Timestamp {
    value.as_str().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("not a timestamp: {value}"))
}

#[test]
fn cronjob_fires_on_its_schedule() {
    let s = server();
    s.ok_stdin(&["create", "-f", "-"], EVERY_MINUTE);
    let cj = s.get_json(&["cronjob", "minutely"]);
    let uid = cj["metadata"]["uid"].as_str().unwrap().to_string();
    let created = timestamp(&cj["metadata"]["creationTimestamp"]);
    let owned = |j: &Value| j["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|o| o["kind"] == "CronJob" && o["uid"] == uid.as_str() && o["controller"] == true));

    // The first time is the start of the next minute, at most 60 s away. No nodes yet: the Job's
    // pod waits unscheduled, so the Job stays active for the checks below.
    let fired = eventually(Duration::from_secs(75), || s.get_json(&["jobs"])["items"].as_array()?.iter().find(|j| owned(j)).cloned());
    let fired = fired.expect("no Job from the CronJob within 75 s");
    let job_uid = fired["metadata"]["uid"].as_str().unwrap().to_string();
    let in_active = |cj: &Value| cj["status"]["active"].as_array().is_some_and(|a| a.iter().any(|r| r["uid"] == job_uid.as_str()));
    wait_for("lastScheduleTime and the Job in status.active", || {
        let cj = s.get_json(&["cronjob", "minutely"]);
        cj["status"]["lastScheduleTime"].is_string() && in_active(&cj)
    });
    let cj = s.get_json(&["cronjob", "minutely"]);
    let scheduled = timestamp(&cj["status"]["lastScheduleTime"]);
    assert_eq!(scheduled.as_second() % 60, 0, "a whole minute: {cj}");
    assert!(scheduled > created && scheduled.as_second() - created.as_second() <= 60, "the first minute after creation: {cj}");
    assert!(timestamp(&fired["metadata"]["creationTimestamp"]) >= scheduled, "{fired}");
    // Named as upstream names it: the scheduled time in minutes since the epoch.
    assert_eq!(name(&fired), format!("minutely-{}", scheduled.as_second() / 60));
    assert_eq!(fired["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"], cj["status"]["lastScheduleTime"], "{fired}");
    let active = cj["status"]["active"].as_array().unwrap().iter().find(|r| r["uid"] == job_uid.as_str()).unwrap().clone();
    assert_eq!((active["kind"].as_str(), active["name"].as_str(), active["namespace"].as_str()), (Some("Job"), Some(name(&fired).as_str()), Some("default")), "{cj}");

    // A node runs the pod to success; the CronJob records it and lets the Job go from active.
    let _nodes = SimNodes::start(env!("CARGO_BIN_EXE_berth"), &s, "sim-", 1, &[]);
    s.ok(&["wait", "--for=condition=complete", &format!("job/{}", name(&fired)), "--timeout=60s"]);
    let completed = job(&s, &name(&fired))["status"]["completionTime"].clone();
    assert!(completed.is_string());
    wait_for("lastSuccessfulTime, and the Job out of status.active", || {
        let cj = s.get_json(&["cronjob", "minutely"]);
        cj["status"]["lastSuccessfulTime"] == completed && !in_active(&cj)
    });
    let events = s.ok(&["get", "events", "--field-selector", "involvedObject.name=minutely"]);
    assert!(events.contains(&format!("Created job {}", name(&fired))), "{events}");
    assert!(events.contains(&format!("Saw completed job: {}, status: Complete", name(&fired))), "{events}");
}
