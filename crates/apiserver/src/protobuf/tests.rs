use serde_json::json;

use super::*;

/// A minimal protobuf writer, enough to build the documents client-go sends.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.varint(u64::from(field) << 3).varint(v as u64)
    }
    fn bytes(&mut self, field: u32, data: &[u8]) -> &mut Self {
        self.varint((u64::from(field) << 3) | 2).varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }
    fn str(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u32, build: impl FnOnce(&mut Writer)) -> &mut Self {
        let mut inner = Writer::default();
        build(&mut inner);
        self.bytes(field, &inner.0)
    }
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut unknown = Writer::default();
    unknown.msg(1, |t| {
        t.str(1, api_version).str(2, kind);
    });
    unknown.bytes(2, raw).str(3, "").str(4, "");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&unknown.0);
    out
}

/// ObjectMeta as gogo writes it: every non-pointer field present, empty ones included.
fn meta(w: &mut Writer, name: &str, namespace: &str) {
    w.str(1, name).str(2, "").str(3, namespace).str(5, "").str(6, "").int(7, 0);
    w.msg(8, |_| {}); // zero creationTimestamp
    w.msg(11, |e| {
        e.str(1, "app").str(2, name);
    });
}

#[test]
fn a_deployment_decodes_to_the_json_go_would_print() {
    let mut d = Writer::default();
    d.msg(1, |m| meta(m, "web", "default"));
    d.msg(2, |spec| {
        spec.int(1, 3);
        spec.msg(2, |sel| {
            sel.msg(1, |e| {
                e.str(1, "app").str(2, "web");
            });
        });
        spec.msg(3, |tpl| {
            tpl.msg(1, |m| meta(m, "", ""));
            tpl.msg(2, |pod| {
                pod.msg(2, |c| {
                    c.str(1, "nginx").str(2, "nginx:1.25").str(14, "").int(16, 0);
                    c.msg(8, |r| {
                        r.msg(2, |e| {
                            e.str(1, "cpu").msg(2, |q| {
                                q.str(1, "100m");
                            });
                        });
                    });
                    c.msg(6, |p| {
                        p.str(1, "").int(3, 80).str(4, "TCP");
                    });
                });
            });
        });
        spec.msg(4, |strategy| {
            strategy.str(1, "");
        });
        spec.int(5, 0);
        spec.int(7, 0);
    });
    d.msg(3, |_| {});
    let value = decode(&envelope("apps/v1", "Deployment", &d.0)).unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": ""}},
                    "spec": {"containers": [{
                        "name": "nginx",
                        "image": "nginx:1.25",
                        "resources": {"requests": {"cpu": "100m"}},
                        "ports": [{"containerPort": 80, "protocol": "TCP"}]
                    }]}
                },
                "strategy": {}
            },
            "status": {}
        })
    );
}

#[test]
fn explicit_zero_of_a_pointer_field_is_kept() {
    let mut d = Writer::default();
    d.msg(1, |m| meta(m, "idle", "default"));
    d.msg(2, |spec| {
        spec.int(1, 0);
    });
    let value = decode(&envelope("apps/v1", "Deployment", &d.0)).unwrap();
    assert_eq!(value["spec"]["replicas"], json!(0));
}

#[test]
fn secrets_carry_bytes_as_base64_and_inline_references_flatten() {
    let mut s = Writer::default();
    s.msg(1, |m| meta(m, "creds", "default"));
    s.msg(2, |e| {
        e.str(1, "password").bytes(2, b"s3cr\xff");
    });
    s.str(3, "Opaque");
    let value = decode(&envelope("v1", "Secret", &s.0)).unwrap();
    assert_eq!(value["data"], json!({"password": "czNjcv8="}));
    assert_eq!(value["type"], json!("Opaque"));

    let mut env = Writer::default();
    env.msg(1, |r| {
        r.str(1, "settings");
    });
    env.int(2, 1);
    let mut pod_env = Writer::default();
    pod_env.str(1, "CFG_").msg(2, |cm| {
        cm.bytes(1, &env.0[2..]).int(2, 1);
    });
    let schema = schema();
    let decoded = decode_message(schema, ".k8s.io.api.core.v1.EnvFromSource", &pod_env.0).unwrap();
    assert_eq!(decoded, json!({"prefix": "CFG_", "configMapRef": {"name": "settings", "optional": true}}));
}

#[test]
fn special_types_have_their_json_forms() {
    let schema = schema();
    let mut rolling = Writer::default();
    rolling.msg(1, |i| {
        i.int(1, 1).int(2, 0).str(3, "25%");
    });
    rolling.msg(2, |i| {
        i.int(1, 0).int(2, 2).str(3, "");
    });
    let decoded = decode_message(schema, ".k8s.io.api.apps.v1.RollingUpdateDeployment", &rolling.0).unwrap();
    assert_eq!(decoded, json!({"maxUnavailable": "25%", "maxSurge": 2}));

    let mut condition = Writer::default();
    condition.str(1, "Ready").str(2, "True").msg(3, |t| {
        t.int(1, 1_700_000_000);
    });
    let decoded = decode_message(schema, ".k8s.io.api.core.v1.PodCondition", &condition.0).unwrap();
    assert_eq!(decoded, json!({"type": "Ready", "status": "True", "lastProbeTime": "2023-11-14T22:13:20Z"}));

    let mut probe = Writer::default();
    probe.int(2, -5);
    let decoded = decode_message(schema, ".k8s.io.api.core.v1.Probe", &probe.0).unwrap();
    assert_eq!(decoded, json!({"initialDelaySeconds": -5}));

    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(1_500_000), "1.5ms");
    assert_eq!(go_duration(2_500_000_000), "2.5s");
}

#[test]
fn options_kinds_resolve_in_any_group_and_raw_extensions_hold_json() {
    let mut opts = Writer::default();
    opts.int(1, 0).str(4, "Foreground");
    let value = decode(&envelope("apps/v1", "DeleteOptions", &opts.0)).unwrap();
    assert_eq!(value["propagationPolicy"], json!("Foreground"));
    assert_eq!(value["gracePeriodSeconds"], json!(0));

    let mut revision = Writer::default();
    revision.msg(1, |m| meta(m, "rev", "default"));
    revision.msg(2, |r| {
        r.bytes(1, br#"{"spec":{"x":1}}"#);
    });
    revision.int(3, 4);
    let value = decode(&envelope("apps/v1", "ControllerRevision", &revision.0)).unwrap();
    assert_eq!(value["data"], json!({"spec": {"x": 1}}));
    assert_eq!(value["revision"], json!(4));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(matches!(decode(b"{}"), Err(DecodeError::NoEnvelope)));
    assert!(matches!(decode(&envelope("v1", "Nope", &[])), Err(DecodeError::UnknownKind { .. })));
    let mut truncated = envelope("v1", "ConfigMap", &[0x0a, 0x05, 0x01]);
    assert!(decode(&truncated).is_err());
    truncated.truncate(6);
    assert!(decode(&truncated).is_err());
    // A string field sent as a varint.
    let mut wrong = Writer::default();
    wrong.msg(1, |m| {
        m.int(1, 7);
    });
    assert!(matches!(decode(&envelope("v1", "ConfigMap", &wrong.0)), Err(DecodeError::WireType { .. })));
    for len in 0..40 {
        let garbage: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let mut doc = MAGIC.to_vec();
        doc.extend(garbage);
        let _ = decode(&doc);
    }
}
