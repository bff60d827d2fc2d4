#!/usr/bin/env python3
"""Builds the field table Berth's protobuf decoder reads (crates/apiserver/src/protobuf/schema.txt).

Kubernetes clients built on client-go send typed objects as protobuf. Berth stores JSON, so it
needs, for every message, each field's number, wire type and JSON name, and whether Go's JSON
encoding would keep a zero value (pointer fields and fields without `omitempty` do). The numbers
and types come from the `generated.proto` files, the JSON names and pointer-ness from the Go
struct tags next to them. Run it against checkouts of kubernetes/api and kubernetes/apimachinery:

    tools/protobuf-schema/generate.py API_DIR APIMACHINERY_DIR > crates/apiserver/src/protobuf/schema.txt

Only stable (v1/v2) groups are included: they are what Berth serves.
"""
import os
import re
import sys

# Directory under k8s.io/api -> API group name.
GROUPS = {
    "core": "",
    "apps": "apps",
    "batch": "batch",
    "autoscaling": "autoscaling",
    "policy": "policy",
    "rbac": "rbac.authorization.k8s.io",
    "networking": "networking.k8s.io",
    "coordination": "coordination.k8s.io",
    "discovery": "discovery.k8s.io",
    "events": "events.k8s.io",
    "scheduling": "scheduling.k8s.io",
    "storage": "storage.k8s.io",
    "authentication": "authentication.k8s.io",
    "authorization": "authorization.k8s.io",
    "certificates": "certificates.k8s.io",
    "admissionregistration": "admissionregistration.k8s.io",
    "node": "node.k8s.io",
}
STABLE = re.compile(r"^v\d+$")

FIELD = re.compile(r"^\s*(optional|repeated)\s+(\S+)\s+(\w+)\s*=\s*(\d+)\s*;")
MAP = re.compile(r"^\s*map<\s*(\S+)\s*,\s*(\S+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;")
STRUCT = re.compile(r"^type (\w+) struct\s*{")
TAGGED = re.compile(r"^\s*(.*?)`(.*)`")


def parse_proto(path):
    package = None
    messages = {}
    current = None
    with open(path) as f:
        for line in f:
            if line.startswith("package "):
                package = line.split()[1].rstrip(";")
            elif line.startswith("message "):
                current = line.split()[1]
                messages[current] = []
            elif line.startswith("}"):
                current = None
            elif current:
                m = FIELD.match(line)
                if m:
                    label, typ, name, num = m.groups()
                    messages[current].append((int(num), name, qualify(typ, package), label == "repeated", None))
                    continue
                m = MAP.match(line)
                if m:
                    key, val, name, num = m.groups()
                    messages[current].append((int(num), name, qualify(val, package), False, key))
    return package, messages


SCALARS = {"string", "bytes", "int32", "int64", "uint32", "uint64", "bool", "double", "float", "sint32", "sint64"}


def qualify(typ, package):
    if typ in SCALARS or typ.startswith("."):
        return typ
    return "." + package + "." + typ


def parse_go_tags(directory):
    """struct name -> proto field name -> (json name, keeps zero)."""
    tags = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".go") or name.endswith("_test.go") or name.startswith("zz_") or name == "generated.pb.go":
            continue
        current = None
        with open(os.path.join(directory, name)) as f:
            for line in f:
                m = STRUCT.match(line)
                if m:
                    current = tags.setdefault(m.group(1), {})
                    continue
                if line.startswith("}"):
                    current = None
                    continue
                if current is None or 'protobuf:"' not in line:
                    continue
                m = TAGGED.match(line)
                if not m:
                    continue
                decl = m.group(1).split()
                go_type = decl[1] if len(decl) >= 2 else decl[0] if decl else ""
                json_tag = re.search(r'json:"([^"]*)"', m.group(2))
                proto_tag = re.search(r'protobuf:"([^"]*)"', m.group(2))
                embedded = len(decl) == 1
                named = re.search(r"name=(\w+)", proto_tag.group(1)) if proto_tag else None
                if named:
                    proto_name = named.group(1)
                elif embedded:
                    bare = go_type.split(".")[-1]
                    proto_name = bare[:1].lower() + bare[1:]
                else:
                    continue
                json_parts = json_tag.group(1).split(",") if json_tag else [proto_name]
                # An embedded struct whose JSON name is empty spreads its fields into the parent.
                json_name = json_parts[0] or ("~" if embedded else proto_name)
                keeps_zero = go_type.startswith("*") or "omitempty" not in json_parts[1:]
                current[proto_name] = (json_name, keeps_zero)
    return tags


def main():
    api_dir, machinery_dir = sys.argv[1], sys.argv[2]
    sources = []  # (group, version, proto path, go dir)
    for group_dir in sorted(os.listdir(api_dir)):
        if group_dir not in GROUPS:
            continue
        for version in sorted(os.listdir(os.path.join(api_dir, group_dir))):
            d = os.path.join(api_dir, group_dir, version)
            if STABLE.match(version) and os.path.exists(os.path.join(d, "generated.proto")):
                sources.append((GROUPS[group_dir], version, os.path.join(d, "generated.proto"), d))
    for rel in ["pkg/apis/meta/v1", "pkg/runtime", "pkg/util/intstr", "pkg/api/resource"]:
        d = os.path.join(machinery_dir, rel)
        sources.append((None, None, os.path.join(d, "generated.proto"), d))

    print("# Generated by tools/protobuf-schema/generate.py from kubernetes/api and kubernetes/apimachinery.")
    print("# G group version package | M message | F number jsonName type repeated(r)/map(m:keytype) keepsZero(z)")
    for group, version, proto, go_dir in sources:
        package, messages = parse_proto(proto)
        tags = parse_go_tags(go_dir)
        if group is not None:
            print(f"G {group or '-'} {version} {package}")
        for message, fields in messages.items():
            print(f"M .{package}.{message}")
            struct_tags = tags.get(message)
            if struct_tags is None:
                print(f"note: no Go struct for {package}.{message}; JSON names fall back to proto names", file=sys.stderr)
                struct_tags = {}
            for num, name, typ, repeated, map_key in fields:
                if name not in struct_tags and struct_tags:
                    print(f"note: no Go field for {package}.{message}.{name}", file=sys.stderr)
                json_name, keeps_zero = struct_tags.get(name, (name, False))
                shape = f"m:{map_key}" if map_key else ("r" if repeated else "-")
                print(f"F {num} {json_name} {typ} {shape} {'z' if keeps_zero else '-'}")


if __name__ == "__main__":
    main()
