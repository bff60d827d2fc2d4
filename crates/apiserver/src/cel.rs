//! CustomResourceDefinition validation rules (`x-kubernetes-validations`), evaluated as
//! kube-apiserver does: every rule of every schema node runs with `self` bound to the value at
//! that node and, for transition rules, `oldSelf` bound to the value at the same path in the old
//! object. A rule that does not evaluate to `true` becomes one [`Cause`].
//!
//! The CEL engine is the `cel` crate (an interpreter without a type checker). What a type
//! checker would reject when the CRD is written is caught here in two ways: [`check_rules`] parses
//! every rule and resolves its identifiers and functions, and [`validate`] reports whatever still
//! fails at run time (a missing key, a call on the wrong type) as an invalid value, worded as
//! upstream words it.
//!
//! Values follow the schema, as upstream's: `integer` is `int`, `number` is `double`, objects
//! with `properties` expose only their declared fields (escaped as upstream escapes them:
//! `foo-bar` is `self.foo__dash__bar`), null fields are absent, maps keep their keys, and a
//! resource root (the object itself, or an `x-kubernetes-embedded-resource`) exposes
//! `apiVersion`, `kind` and only `metadata.name` / `metadata.generateName`.
//!
//! Besides the CEL standard library (with optionals, timestamps and durations), the Kubernetes
//! libraries CRDs use are registered: the strings extension (`lowerAscii`, `upperAscii`,
//! `split`, `join`, `indexOf`, `lastIndexOf`, `replace`, `substring`, `trim`, `charAt`,
//! `format`), lists (`isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf`), regex (`find`,
//! `findAll`), sets (`sets.contains`, `sets.equivalent`, `sets.intersects`), URLs (`url`,
//! `isURL`, `getScheme`, `getHost`, `getHostname`, `getPort`, `getEscapedPath`, `getQuery`),
//! IPs and CIDRs (`ip`, `isIP`, `ip.isCanonical`, `family`, `is*` tests, `cidr`, `isCIDR`,
//! `containsIP`, `containsCIDR`, `masked`, `prefixLength`, `string`) and quantities
//! (`quantity`, `isQuantity`, `sign`, `isInteger`, `asInteger`, `asApproximateFloat`, `add`,
//! `sub`, `isGreaterThan`, `isLessThan`, `compareTo`). Strings with `format: date-time`,
//! `duration` or `byte` are timestamps, durations and bytes, as upstream.
//!
//! Not implemented: two-variable comprehensions (`all(k, v, ...)`, `transformList`, ...), the
//! `format.*` and semver libraries. A rule using them is accepted by [`check_rules`] (upstream
//! accepts it) and skipped by [`validate`], rather than failing every object. Lists compare in
//! order whatever their `x-kubernetes-list-type` (upstream compares `set` and `map` lists as
//! such). Failures of a value that did not change in an update are ratcheted, as upstream
//! does (which reports them as warnings; here they are dropped).
//!
//! The interpreter has no cost accounting, so each evaluation is estimated before it runs from
//! the rule's size, its macro nesting and the widest list or map it can iterate; rules whose
//! estimate exceeds the per-call limit, or that would exhaust the per-request budget, are reported
//! with upstream's cost messages instead of being run.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional, CelString, DYN_TYPE, INT_TYPE, LIST_TYPE,
    STRING_TYPE, Type,
};
use cel::common::value::{CowVal, Val};
use cel::objects::{Key as CelKey, Map as CelValueMap, Opaque};
use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::status::Cause;

/// Estimated cost above which one evaluation is refused (upstream's per-call limit, in this
/// module's cruder units: AST nodes times iterations, plus the values handed in).
const PER_CALL_LIMIT: u64 = 5_000_000;
/// Estimated cost all the rules of one `validate` call may spend together.
const REQUEST_BUDGET: u64 = 50_000_000;
/// Deepest expression tree accepted; deeper ones would risk the evaluator's stack.
const MAX_AST_DEPTH: usize = 250;
/// Longest rule source accepted, in bytes.
const MAX_RULE_LEN: usize = 100_000;
/// Stack of the thread rules are parsed on: enough for a chain of MAX_RULE_LEN / 2 operators.
const PARSER_STACK: usize = 64 << 20;
/// Longest messageExpression result kept (upstream's MaxEvaluatedMessageExpressionSizeBytes).
const MAX_MESSAGE_LEN: usize = 5 * 1024;
/// Compiled expressions kept; the cache is emptied when it grows past this.
const CACHE_LIMIT: usize = 4096;

const QUANTITY_TYPE_NAME: &str = "kubernetes.Quantity";
const URL_TYPE_NAME: &str = "kubernetes.URL";
const IP_TYPE_NAME: &str = "net.IP";
const CIDR_TYPE_NAME: &str = "net.CIDR";
const REASONS: [&str; 4] = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"];
const RESERVED: [&str; 21] = [
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];
const TYPE_NAMES: [&str; 10] = ["bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint"];

/// Evaluates every x-kubernetes-validations rule in `schema` (a CRD version's openAPIV3Schema) against `obj`
/// (the whole custom object as JSON) and, for updates, `old`. Returns one Cause per failed rule.
pub fn validate(schema: &serde_json::Value, obj: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<crate::status::Cause> {
    let mut walker = Walker { causes: Vec::new(), budget: REQUEST_BUDGET, stopped: false };
    walker.node(schema, schema, obj, old, None, "", true);
    walker.causes
}

/// Compiles every rule in a schema; returns (field path, message) for rules that do not compile, for CRD validation.
///
/// Paths are relative to the schema, as upstream spells them below `openAPIV3Schema`
/// (`properties[spec].x-kubernetes-validations[0].rule`); the message is the detail of an
/// invalid value (`compilation failed: ERROR: <input>:1:8: ...`). Besides compilation, the other
/// checks upstream makes of a rule are reported too: empty rule, message and messageExpression
/// shape, unknown reason, invalid fieldPath, `oldSelf` below a list that cannot correlate items,
/// and `optionalOldSelf` on a rule without `oldSelf`.
pub fn check_rules(schema: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    check_node(schema, String::new(), None, &mut out, 0);
    out
}

// ---------------------------------------------------------------------------------------------
// Schema helpers

fn schema_type(s: &Value) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn properties(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

/// `additionalProperties` when it is a schema (not a bare `true`/`false`).
fn additional(s: &Value) -> Option<&Value> {
    s.get("additionalProperties").filter(|a| a.is_object())
}

fn items(s: &Value) -> Option<&Value> {
    s.get("items").filter(|i| i.is_object())
}

fn rules(s: &Value) -> &[Value] {
    s.get("x-kubernetes-validations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn child_path(base: &str, name: &str) -> String {
    if base.is_empty() { name.to_string() } else { format!("{base}.{name}") }
}

/// How a failing node is named in a cause: upstream's `field.Path` of the root prints `<nil>`.
fn shown_path(path: &str) -> String {
    if path.is_empty() { "<nil>".to_string() } else { path.to_string() }
}

/// Escapes a property name into a CEL identifier as upstream does, or `None` when the name
/// cannot be one (such a property is not reachable from CEL).
fn escape(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0].is_ascii_digit() {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' if bytes.get(i + 1) == Some(&b'_') => {
                out.push_str("__underscores__");
                i += 2;
                continue;
            }
            b'.' => out.push_str("__dot__"),
            b'-' => out.push_str("__dash__"),
            b'/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == b'_' => out.push(c as char),
            _ => return None,
        }
        i += 1;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// JSON to CEL values

/// What converting a value saw, for the cost estimate.
#[derive(Default)]
struct Shape {
    nodes: u64,
    widest: u64,
}

fn to_val<'a>(v: &'a Value, s: Option<&'a Value>, resource_root: bool, shape: &mut Shape) -> Box<dyn Val + 'a> {
    shape.nodes += 1;
    let ty = s.map(schema_type).unwrap_or("");
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            if ty == "number" {
                return Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)));
            }
            if let Some(i) = n.as_i64() {
                return Box::new(CelInt::from(i));
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            if ty == "integer" && f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                return Box::new(CelInt::from(f as i64));
            }
            Box::new(CelDouble::from(f))
        }
        Value::String(text) => {
            let format = s.and_then(|s| s.get("format")).and_then(Value::as_str).unwrap_or("");
            formatted(text, format).unwrap_or_else(|| Box::new(CelString::from(text.as_str())))
        }
        Value::Array(elements) => {
            shape.widest = shape.widest.max(elements.len() as u64);
            let item_schema = s.and_then(items);
            let list: Vec<Box<dyn Val + 'a>> = elements.iter().map(|e| to_val(e, item_schema, false, shape)).collect();
            Box::new(CelList::from(list))
        }
        Value::Object(fields) => {
            shape.widest = shape.widest.max(fields.len() as u64);
            let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(fields.len());
            let embedded = resource_root || s.is_some_and(|s| flag(s, "x-kubernetes-embedded-resource"));
            let props = s.and_then(properties);
            let extra = s.and_then(additional);
            let dynamic = match s {
                None => true,
                Some(s) => flag(s, "x-kubernetes-preserve-unknown-fields") || (props.is_none() && extra.is_none()),
            };
            for (key, value) in fields {
                if embedded && (key == "apiVersion" || key == "kind" || key == "metadata") {
                    if value.is_null() {
                        continue;
                    }
                    let converted = if key == "metadata" { metadata_val(value, shape) } else { to_val(value, None, false, shape) };
                    map.insert(CelMapKey::from(key.as_str()), converted);
                    continue;
                }
                if let Some(prop) = props.and_then(|p| p.get(key)) {
                    if value.is_null() {
                        continue;
                    }
                    if let Some(escaped) = escape(key) {
                        map.insert(CelMapKey::from(escaped), to_val(value, Some(prop), false, shape));
                    }
                } else if let Some(extra) = extra {
                    map.insert(CelMapKey::from(key.as_str()), to_val(value, Some(extra), false, shape));
                } else if dynamic {
                    map.insert(CelMapKey::from(key.as_str()), to_val(value, None, false, shape));
                }
            }
            Box::new(CelMap::from(map))
        }
    }
}

/// A string whose schema `format` makes it another CEL type upstream: `date-time` a timestamp,
/// `duration` a duration, `byte` bytes. `None` keeps it a string (also when it does not parse).
fn formatted<'a>(text: &'a str, format: &str) -> Option<Box<dyn Val + 'a>> {
    let function = match format {
        "byte" => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
            return Some(Box::new(CelBytes::from(bytes)));
        }
        "date-time" => "timestamp",
        "duration" => "duration",
        _ => return None,
    };
    let args = vec![CowVal::owned(CelString::from(text))];
    let convert = env().find_overload(function, &args)?;
    convert(args).ok().map(CowVal::into_owned)
}

/// A resource's metadata as CEL sees it: only `name` and `generateName`.
fn metadata_val<'a>(v: &'a Value, shape: &mut Shape) -> Box<dyn Val + 'a> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
    for key in ["name", "generateName"] {
        if let Some(Value::String(text)) = v.get(key) {
            shape.nodes += 1;
            map.insert(CelMapKey::from(key), Box::new(CelString::from(text.as_str())));
        }
    }
    Box::new(CelMap::from(map))
}

// ---------------------------------------------------------------------------------------------
// Compilation

struct Compiled {
    program: Program,
    /// A function or macro of upstream's environment that is not implemented here; such a rule
    /// is accepted and skipped rather than failing every object.
    unsupported: Option<String>,
    uses_old_self: bool,
    /// AST nodes.
    size: u64,
    /// Deepest nesting of macros (comprehensions).
    loops: u32,
}

type Compilation = Arc<Result<Compiled, String>>;

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings).expect("strings extension registers");
        register_k8s_libraries(&mut env).expect("Kubernetes CEL libraries register");
        Arc::new(env)
    })
}

/// Whether `name` is a function the environment declares.
fn declared(name: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = seen.lock().ok().and_then(|m| m.get(name).copied()) {
        return known;
    }
    // `add_function` refuses a name the environment already declares an overload for.
    let mut probe = Context::with_env(env().clone());
    let known = probe.add_function(name, || true).is_err();
    if let Ok(mut m) = seen.lock()
        && m.len() < CACHE_LIMIT
    {
        m.insert(name.to_string(), known);
    }
    known
}

/// Compiles `source`, from the cache when it was compiled before.
fn compile(source: &str) -> Compilation {
    static CACHE: OnceLock<Mutex<HashMap<String, Compilation>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|m| m.get(source).cloned()) {
        return hit;
    }
    let compiled = Arc::new(compile_uncached(source));
    if let Ok(mut m) = cache.lock() {
        if m.len() >= CACHE_LIMIT {
            m.clear();
        }
        m.insert(source.to_string(), compiled.clone());
    }
    compiled
}

fn compile_uncached(source: &str) -> Result<Compiled, String> {
    if source.len() > MAX_RULE_LEN {
        return Err(format!("ERROR: <input>:1:1: expression size {} exceeds limit {MAX_RULE_LEN}", source.len()));
    }
    // The parser recurses once per operator of a chain (`1 + 1 + ...`), so it runs on a thread
    // whose stack fits the longest chain a rule of MAX_RULE_LEN can spell; the depth check of
    // `analyze` then keeps what is evaluated (on the caller's stack) shallow.
    let owned = source.to_string();
    let spawned = std::thread::Builder::new().name("cel-compile".into()).stack_size(PARSER_STACK).spawn(move || parse_and_analyze(&owned));
    match spawned {
        Ok(handle) => handle.join().unwrap_or_else(|_| Err("ERROR: <input>:1:1: the expression could not be parsed".to_string())),
        Err(_) if operator_count(source) <= 500 => parse_and_analyze(source),
        Err(_) => Err("ERROR: <input>:1:1: the expression could not be parsed: no thread to parse it on".to_string()),
    }
}

fn parse_and_analyze(source: &str) -> Result<Compiled, String> {
    let program = match catch_unwind(AssertUnwindSafe(|| env().compile(source))) {
        Ok(Ok(program)) => program,
        Ok(Err(errors)) => return Err(errors.to_string()),
        Err(_) => return Err("ERROR: <input>:1:1: the expression could not be parsed".to_string()),
    };
    let facts = analyze(program.expression())?;
    Ok(Compiled { program, unsupported: facts.unsupported, uses_old_self: facts.uses_old_self, size: facts.size, loops: facts.loops })
}

/// Characters outside string literals that can nest the expression one level deeper.
fn operator_count(source: &str) -> usize {
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None if ".[(+-*/%<>=!&|?:,{".contains(c) => count += 1,
            None => {}
        }
    }
    count
}

struct Facts {
    unsupported: Option<String>,
    uses_old_self: bool,
    size: u64,
    loops: u32,
}

/// Walks the AST (without recursion, so a deep tree cannot exhaust the stack): sizes it, and
/// resolves every identifier and function as a type checker would.
fn analyze(root: &IdedExpr) -> Result<Facts, String> {
    let mut facts = Facts { unsupported: None, uses_old_self: false, size: 0, loops: 0 };
    let empty: Rc<Vec<String>> = Rc::new(Vec::new());
    let mut stack: Vec<(&IdedExpr, u32, usize, Rc<Vec<String>>)> = vec![(root, 0, 1, empty)];
    let undeclared = |name: &str| format!("ERROR: <input>: undeclared reference to '{name}' (in container '')");
    // The first unresolved name; reported unless the rule uses an upstream-only feature, whose
    // own names (`semver(v).major()`) would not resolve either.
    let mut unresolved: Option<String> = None;
    while let Some((expr, loops, depth, scope)) = stack.pop() {
        facts.size += 1;
        if depth > MAX_AST_DEPTH {
            return Err(format!("ERROR: <input>: expression recursion limit exceeded: {MAX_AST_DEPTH}"));
        }
        let is_var = |name: &str| name == "self" || name == "oldSelf" || scope.iter().any(|v| v == name);
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                if name == "oldSelf" && !scope.iter().any(|v| v == name) {
                    facts.uses_old_self = true;
                }
                if !(is_var(name) || name.starts_with('@') || TYPE_NAMES.contains(&name.as_str())) {
                    unresolved.get_or_insert_with(|| undeclared(name));
                }
            }
            Expr::Select(select) => stack.push((&select.operand, loops, depth + 1, scope.clone())),
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let operator = name.starts_with('_') || name.starts_with('@') || name == "!_" || name == "-_";
                let mut visit_target = true;
                if let Some(feature) = upstream_only(call) {
                    facts.unsupported.get_or_insert(feature);
                    continue;
                }
                if !operator {
                    let namespaced = match call.target.as_deref().map(|t| &t.expr) {
                        Some(Expr::Ident(ns)) if !is_var(ns) && !TYPE_NAMES.contains(&ns.as_str()) => Some(format!("{ns}.{name}")),
                        _ => None,
                    };
                    match namespaced {
                        Some(qualified) => {
                            if !declared(&qualified) {
                                unresolved.get_or_insert_with(|| undeclared(&qualified));
                            }
                            visit_target = false;
                        }
                        None => {
                            if !declared(name) {
                                unresolved.get_or_insert_with(|| undeclared(name));
                            }
                        }
                    }
                }
                // Regex literals are checked up front, as upstream's ValidateRegexLiterals does.
                if matches!(name, "matches" | "find" | "findAll") {
                    let pattern = if call.target.is_some() { call.args.first() } else { call.args.get(1) };
                    if let Some(Expr::Literal(LiteralValue::String(pattern))) = pattern.map(|p| &p.expr)
                        && let Err(e) = regex::Regex::new(pattern.inner())
                    {
                        unresolved.get_or_insert_with(|| format!("ERROR: <input>: invalid regex in '{name}': {e}"));
                    }
                }
                if let Some(target) = call.target.as_deref().filter(|_| visit_target) {
                    stack.push((target, loops, depth + 1, scope.clone()));
                }
                for arg in &call.args {
                    stack.push((arg, loops, depth + 1, scope.clone()));
                }
            }
            Expr::Comprehension(comp) => {
                facts.loops = facts.loops.max(loops + 1);
                let mut inner = (*scope).clone();
                inner.push(comp.iter_var.clone());
                if let Some(second) = &comp.iter_var2 {
                    inner.push(second.clone());
                }
                inner.push(comp.accu_var.clone());
                let inner = Rc::new(inner);
                stack.push((&comp.iter_range, loops, depth + 1, scope.clone()));
                stack.push((&comp.accu_init, loops, depth + 1, scope.clone()));
                stack.push((&comp.loop_cond, loops + 1, depth + 1, inner.clone()));
                stack.push((&comp.loop_step, loops + 1, depth + 1, inner.clone()));
                stack.push((&comp.result, loops, depth + 1, inner));
            }
            Expr::List(list) => {
                for element in &list.elements {
                    stack.push((element, loops, depth + 1, scope.clone()));
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(e) = &entry.expr {
                        stack.push((&e.key, loops, depth + 1, scope.clone()));
                        stack.push((&e.value, loops, depth + 1, scope.clone()));
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &st.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => stack.push((&f.value, loops, depth + 1, scope.clone())),
                        EntryExpr::MapEntry(e) => {
                            stack.push((&e.key, loops, depth + 1, scope.clone()));
                            stack.push((&e.value, loops, depth + 1, scope.clone()));
                        }
                    }
                }
            }
        }
    }
    match unresolved {
        Some(error) if facts.unsupported.is_none() => Err(error),
        _ => Ok(facts),
    }
}

/// Names the upstream CEL feature `call` uses that this environment lacks: two-variable
/// comprehensions and the `format` and `semver` libraries.
fn upstream_only(call: &cel::common::ast::CallExpr) -> Option<String> {
    let name = call.func_name.as_str();
    let two_variable = matches!(name, "all" | "exists" | "existsOne" | "exists_one") && call.target.is_some() && call.args.len() == 3;
    if two_variable || matches!(name, "transformList" | "transformMap" | "transformMapEntry" | "semver" | "isSemver" | "validate") {
        return Some(name.to_string());
    }
    if name.starts_with("format.") {
        return Some(name.to_string());
    }
    match call.target.as_deref().map(|t| &t.expr) {
        Some(Expr::Ident(ns)) if ns == "format" => Some(format!("format.{name}")),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// fieldPath

/// Validates a rule's `fieldPath` against the schema of the node the rule is on and returns it
/// normalized as upstream's `field.Path` prints it (`testMap[foo]`, `spec.x`).
fn normalize_field_path(field_path: &str, schema: &Value) -> Result<String, String> {
    let tokens = tokenize_field_path(field_path);
    let mut out = String::new();
    let mut node = schema;
    let mut i = 0;
    let step = |name: String, node: &mut &Value, out: &mut String| -> Result<(), String> {
        if let Some(props) = properties(node) {
            let next = props.get(&name).ok_or("does not refer to a valid field")?;
            *out = child_path(out, &name);
            *node = next;
        } else if let Some(extra) = additional(node) {
            out.push_str(&format!("[{name}]"));
            *node = extra;
        } else {
            return Err("does not refer to a valid field".to_string());
        }
        Ok(())
    };
    while i < tokens.len() {
        match tokens[i].as_str() {
            "[" => {
                let quoted = tokens.get(i + 1).ok_or("unexpected end of JSON path")?;
                if quoted.len() < 2 || !quoted.starts_with('\'') || !quoted.ends_with('\'') {
                    return Err(format!("expected single quoted string but got {quoted}"));
                }
                let name = unescape_single_quoted(&quoted[1..quoted.len() - 1]).map_err(|e| format!("invalid string literal: {e}"))?;
                step(name, &mut node, &mut out)?;
                match tokens.get(i + 2).map(String::as_str) {
                    Some("]") => {}
                    Some(other) => return Err(format!("expected ] but got {other}")),
                    None => return Err("unexpected end of JSON path".to_string()),
                }
                i += 3;
            }
            "." => {
                let name = tokens.get(i + 1).ok_or("unexpected end of JSON path")?;
                step(name.clone(), &mut node, &mut out)?;
                i += 2;
            }
            other => return Err(format!("expected [ or . but got: {other}")),
        }
    }
    Ok(out)
}

/// Splits a field path into `.`, `[`, `]`, quoted strings and the names between them.
fn tokenize_field_path(path: &str) -> Vec<String> {
    let chars: Vec<char> = path.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && !(chars[j] == '\'' && chars[j - 1] != '\\') {
                j += 1;
            }
            let end = (j + 1).min(chars.len());
            tokens.push(chars[i..end].iter().collect());
            i = end;
        } else if matches!(c, '.' | '[' | ']') {
            tokens.push(c.to_string());
            i += 1;
        } else {
            let mut j = i;
            while j < chars.len() && !matches!(chars[j], '.' | '[' | ']') {
                j += 1;
            }
            tokens.push(chars[i..j].iter().collect());
            i = j;
        }
    }
    tokens
}

fn unescape_single_quoted(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('v') => out.push('\u{b}'),
            Some('\'') => out.push('\''),
            Some('\\') => out.push('\\'),
            Some(other) => return Err(format!("invalid escape char \\{other}")),
            None => return Err("invalid escape char \\".to_string()),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Validation

struct Walker {
    causes: Vec<Cause>,
    budget: u64,
    /// Set once the budget ran out or a call exceeded its limit: no further rule runs.
    stopped: bool,
}

impl Walker {
    /// Validates `obj` at `path` against the rules of `vs` (the validation schema; differs from
    /// `ts`, the node's own schema, inside `allOf`) and then its children. `ancestor` is the
    /// nearest (new, old) pair above that correlates, for ratcheting where this node does not.
    #[allow(clippy::too_many_arguments)]
    fn node<'a>(
        &mut self,
        vs: &Value,
        ts: &Value,
        obj: &'a Value,
        old: Option<&'a Value>,
        ancestor: Option<(&'a Value, &'a Value)>,
        path: &str,
        resource_root: bool,
    ) {
        if self.stopped || obj.is_null() {
            return;
        }
        let old = old.filter(|o| !o.is_null());
        let pair = old.map(|o| (obj, o)).or(ancestor);
        let resource_root = resource_root || flag(ts, "x-kubernetes-embedded-resource");
        let node_rules = rules(vs);
        if !node_rules.is_empty() {
            self.rules(node_rules, ts, obj, old, pair, path, resource_root);
        }
        if let Some(all_of) = vs.get("allOf").and_then(Value::as_array) {
            for sub in all_of {
                self.node(sub, ts, obj, old, ancestor, path, resource_root);
            }
        }
        match obj {
            Value::Object(fields) => {
                // Maps correlate by key whatever their x-kubernetes-map-type (granular or atomic).
                let old_fields = old.and_then(Value::as_object);
                if let (Some(vprops), Some(tprops)) = (properties(vs), properties(ts)) {
                    for (key, value) in fields {
                        if let (Some(vsub), Some(tsub)) = (vprops.get(key), tprops.get(key)) {
                            let old_value = old_fields.and_then(|o| o.get(key));
                            self.node(vsub, tsub, value, old_value, None, &child_path(path, key), false);
                        }
                    }
                }
                if let (Some(vsub), Some(tsub)) = (additional(vs), additional(ts)) {
                    for (key, value) in fields {
                        let old_value = old_fields.and_then(|o| o.get(key));
                        self.node(vsub, tsub, value, old_value, None, &format!("{path}[{key}]"), false);
                    }
                }
            }
            Value::Array(elements) => {
                if let (Some(vsub), Some(tsub)) = (items(vs), items(ts)) {
                    let correlate = MapList::new(ts, old);
                    for (i, element) in elements.iter().enumerate() {
                        // Items that do not correlate ratchet with the list.
                        self.node(vsub, tsub, element, correlate.get(element), pair, &format!("{path}[{i}]"), false);
                    }
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rules(
        &mut self,
        node_rules: &[Value],
        ts: &Value,
        obj: &Value,
        old: Option<&Value>,
        pair: Option<(&Value, &Value)>,
        path: &str,
        resource_root: bool,
    ) {
        let ty = schema_type(ts);
        let mut shape = Shape::default();
        let env = env();
        let mut ctx = Context::with_env(env.clone());
        ctx.add_variable_as_val("self", to_val(obj, Some(ts), resource_root, &mut shape));
        // As upstream, oldSelf is bound only where some rule of the node is a transition rule.
        let transition = node_rules.iter().any(|r| {
            let source = r.get("rule").and_then(Value::as_str).unwrap_or("");
            !source.trim().is_empty() && compile(source).as_ref().as_ref().is_ok_and(|c| c.uses_old_self)
        });
        if let Some(old) = old.filter(|_| transition) {
            ctx.add_variable_as_val("oldSelf", to_val(old, Some(ts), resource_root, &mut shape));
        }
        // The activation of rules with optionalOldSelf, built when one needs it.
        let mut optional_ctx: Option<Context> = None;
        // Whether the value (or the nearest correlated one above) equals its old value.
        let mut unchanged: Option<bool> = None;

        for rule in node_rules {
            if self.stopped {
                return;
            }
            let source = rule.get("rule").and_then(Value::as_str).unwrap_or("");
            if source.trim().is_empty() {
                continue;
            }
            let message = rule.get("message").and_then(Value::as_str).unwrap_or("");
            let error_string = if message.is_empty() { source.trim() } else { message.trim() };
            let compiled = compile(source);
            let compiled = match compiled.as_ref() {
                Ok(c) => c,
                Err(e) => {
                    self.causes.push(Cause::invalid(
                        shown_path(path),
                        &Value::from(ty),
                        format!("rule compile error: compilation failed: {e}"),
                    ));
                    continue;
                }
            };
            if compiled.unsupported.is_some() {
                continue; // accepted when the CRD was written, as upstream would; not evaluated here
            }
            let optional_old_self = flag(rule, "optionalOldSelf");
            if compiled.uses_old_self && old.is_none() && !optional_old_self {
                continue; // a transition rule only runs when there is an old value to compare with
            }
            if !self.charge(compiled, &shape, path, ty, error_string) {
                return;
            }
            let activation: &Context = if optional_old_self && compiled.uses_old_self {
                optional_ctx.get_or_insert_with(|| {
                    let mut ctx = Context::with_env(env.clone());
                    let mut ignored = Shape::default();
                    ctx.add_variable_as_val("self", to_val(obj, Some(ts), resource_root, &mut ignored));
                    let old_val = match old {
                        Some(old) => CelOptional::of(to_val(old, Some(ts), resource_root, &mut ignored)),
                        None => CelOptional::none(),
                    };
                    ctx.add_variable_as_val("oldSelf", Box::new(old_val));
                    ctx
                })
            } else {
                &ctx
            };
            let result = catch_unwind(AssertUnwindSafe(|| compiled.program.execute(activation)))
                .unwrap_or_else(|_| Err(ExecutionError::function_error("rule", "internal error evaluating the expression")));
            match result {
                Ok(CelValue::Bool(true)) => continue,
                Ok(_) => {}
                Err(error) => {
                    let detail = match error_text(&error) {
                        (true, text) => format!(
                            "'{text}': call arguments did not match a supported operator, function or macro signature for rule: {error_string}"
                        ),
                        (false, text) => format!("{text} evaluating rule: {error_string}"),
                    };
                    self.causes.push(Cause::invalid(shown_path(path), &Value::from(ty), detail));
                    continue;
                }
            }

            // Ratcheting, as upstream (where it is a warning): a value that did not change may
            // keep failing a rule that does not look at oldSelf.
            if !compiled.uses_old_self && *unchanged.get_or_insert_with(|| pair.is_some_and(|(new, old)| new == old)) {
                continue;
            }

            let mut field = path.to_string();
            if let Some(fp) = rule.get("fieldPath").and_then(Value::as_str).filter(|f| !f.trim().is_empty())
                && let Ok(normalized) = normalize_field_path(fp.trim(), ts)
                && !normalized.is_empty()
            {
                field = child_path(&field, &normalized);
            }
            let mut detail = None;
            if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str).filter(|m| !m.trim().is_empty()) {
                detail = self.message_expression(expr, &ctx, &shape);
            }
            let detail = detail
                .unwrap_or_else(|| if message.is_empty() { format!("failed rule: {}", source.trim()) } else { message.trim().to_string() });
            let reason = rule.get("reason").and_then(Value::as_str);
            self.causes.push(cause_for(reason, shown_path(&field), ty, detail));
        }
    }

    /// Takes the estimated cost of one evaluation from the budget; false (with the cause
    /// recorded) when it may not run, after which nothing more runs.
    fn charge(&mut self, compiled: &Compiled, shape: &Shape, path: &str, ty: &str, error_string: &str) -> bool {
        let cost = estimate(compiled, shape);
        if cost > PER_CALL_LIMIT {
            self.causes.push(Cause::invalid(
                shown_path(path),
                &Value::from(ty),
                format!(
                    "'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {error_string}"
                ),
            ));
            self.stopped = true;
            return false;
        }
        if cost > self.budget {
            self.causes.push(Cause::invalid(
                shown_path(path),
                &Value::from(ty),
                "validation failed due to running out of cost budget, no further validation rules will be run",
            ));
            self.stopped = true;
            return false;
        }
        self.budget -= cost;
        true
    }

    /// The message a messageExpression gives, or `None` when it fails (the static message is
    /// used then, as upstream does).
    fn message_expression(&mut self, source: &str, ctx: &Context, shape: &Shape) -> Option<String> {
        let compiled = compile(source);
        let compiled = compiled.as_ref().as_ref().ok().filter(|c| c.unsupported.is_none())?;
        let cost = estimate(compiled, shape);
        if cost > PER_CALL_LIMIT || cost > self.budget {
            return None;
        }
        self.budget -= cost;
        let result = catch_unwind(AssertUnwindSafe(|| compiled.program.execute(ctx))).ok()?.ok()?;
        let CelValue::String(text) = result else { return None };
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_MESSAGE_LEN || text.contains('\n') {
            return None;
        }
        Some(text.to_string())
    }
}

/// Upper bound on the work of one evaluation: every value handed in, plus the rule's nodes
/// for each iteration of its deepest macro nesting over the widest list or map.
fn estimate(compiled: &Compiled, shape: &Shape) -> u64 {
    let width = shape.widest.max(1);
    let mut per_node = 1u64;
    for _ in 0..compiled.loops {
        per_node = per_node.saturating_mul(width);
    }
    shape.nodes.saturating_add(compiled.size.saturating_mul(per_node))
}

fn cause_for(reason: Option<&str>, field: String, ty: &str, detail: String) -> Cause {
    match reason {
        Some("FieldValueForbidden") => Cause::forbidden(field, detail),
        Some("FieldValueRequired") => Cause::required_because(field, detail),
        Some("FieldValueDuplicate") => Cause::duplicate(field, &Value::from(ty)),
        _ => Cause::invalid(field, &Value::from(ty), detail),
    }
}

/// An evaluation error as cel-go words it; `true` when it is an overload mismatch (upstream
/// words those differently).
fn error_text(error: &ExecutionError) -> (bool, String) {
    match error {
        ExecutionError::NoSuchKey(key) => (false, format!("no such key: {key}")),
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::UnexpectedType { .. }
        | ExecutionError::UnsupportedTargetType { .. }
        | ExecutionError::NotSupportedAsMethod { .. }
        | ExecutionError::UnsupportedIndex(..)
        | ExecutionError::UnsupportedKeyType(..)
        | ExecutionError::InvalidArgumentCount { .. } => (true, "no such overload".to_string()),
        ExecutionError::DivisionByZero(_) => (false, "division by zero".to_string()),
        ExecutionError::RemainderByZero(_) => (false, "modulus by zero".to_string()),
        ExecutionError::Overflow(..) => (false, "integer overflow".to_string()),
        ExecutionError::IndexOutOfBounds(index) => (false, format!("index out of bounds: {}", show(index))),
        ExecutionError::UndeclaredReference(name) => (false, format!("no such attribute(s): {name}")),
        ExecutionError::FunctionError { message, .. } => (false, message.clone()),
        other => (false, other.to_string()),
    }
}

fn show(v: &CelValue) -> String {
    match v {
        CelValue::Int(i) => i.to_string(),
        CelValue::UInt(u) => u.to_string(),
        CelValue::Float(f) => f.to_string(),
        CelValue::String(s) => s.to_string(),
        CelValue::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// Finds the old item of a `x-kubernetes-list-type: map` list that has the same keys as a new
/// one. Other lists do not correlate: their items have no `oldSelf`.
struct MapList<'a> {
    keys: Vec<&'a str>,
    old: HashMap<String, &'a Value>,
}

impl<'a> MapList<'a> {
    fn new(ts: &'a Value, old: Option<&'a Value>) -> Self {
        let mut list = MapList { keys: Vec::new(), old: HashMap::new() };
        if ts.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
            return list;
        }
        list.keys = ts
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|keys| keys.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if list.keys.is_empty() {
            return list;
        }
        for item in old.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(key) = list.key(item) {
                list.old.entry(key).or_insert(item);
            }
        }
        list
    }

    fn key(&self, item: &Value) -> Option<String> {
        let object = item.as_object()?;
        let parts: Vec<&Value> = self.keys.iter().map(|k| object.get(*k).unwrap_or(&Value::Null)).collect();
        serde_json::to_string(&parts).ok()
    }

    fn get(&self, item: &Value) -> Option<&'a Value> {
        if self.old.is_empty() {
            return None;
        }
        self.old.get(&self.key(item)?).copied()
    }
}

// ---------------------------------------------------------------------------------------------
// CRD-time checks

fn check_node(s: &Value, path: String, uncorrelatable: Option<String>, out: &mut Vec<(String, String)>, depth: usize) {
    if depth > 200 || !s.is_object() {
        return;
    }
    for (i, rule) in rules(s).iter().enumerate() {
        check_rule(s, rule, &child_path(&path, &format!("x-kubernetes-validations[{i}]")), uncorrelatable.as_deref(), out);
    }
    if let Some(props) = properties(s) {
        for (name, sub) in props {
            check_node(sub, child_path(&path, &format!("properties[{name}]")), uncorrelatable.clone(), out, depth + 1);
        }
    }
    if let Some(extra) = additional(s) {
        check_node(extra, child_path(&path, "additionalProperties"), uncorrelatable.clone(), out, depth + 1);
    }
    if let Some(item) = items(s) {
        let correlatable = s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map");
        let within = match uncorrelatable.clone() {
            Some(p) => Some(p),
            None if !correlatable => Some(if path.is_empty() { "<nil>".to_string() } else { path.clone() }),
            None => None,
        };
        check_node(item, child_path(&path, "items"), within, out, depth + 1);
    }
    if let Some(all_of) = s.get("allOf").and_then(Value::as_array) {
        for (i, sub) in all_of.iter().enumerate() {
            check_node(sub, child_path(&path, &format!("allOf[{i}]")), uncorrelatable.clone(), out, depth + 1);
        }
    }
}

fn check_rule(s: &Value, rule: &Value, at: &str, uncorrelatable: Option<&str>, out: &mut Vec<(String, String)>) {
    let text = |name: &str| rule.get(name).and_then(Value::as_str).unwrap_or("");
    let source = text("rule");
    let message = text("message");
    let message_expression = text("messageExpression");
    let field_path = text("fieldPath");
    let mut push = |name: &str, detail: String| out.push((format!("{at}.{name}"), detail));

    if source.trim().is_empty() {
        push("rule", "rule is not specified".to_string());
    } else if !message.is_empty() && message.trim().is_empty() {
        push("message", "message must be non-empty if specified".to_string());
    } else if message.trim().contains(['\n', '\r']) {
        push("message", "message must not contain line breaks".to_string());
    } else if source.trim().contains(['\n', '\r']) && message.trim().is_empty() {
        push("message", "message must be specified if rule contains line breaks".to_string());
    }
    if !message_expression.is_empty() && message_expression.trim().is_empty() {
        push("messageExpression", "messageExpression must be non-empty if specified".to_string());
    }
    if let Some(reason) = rule.get("reason").filter(|r| !r.is_null()) {
        let supported = reason.as_str().is_some_and(|r| REASONS.contains(&r));
        if !supported {
            let allowed: Vec<String> = REASONS.iter().map(|r| format!("{r:?}")).collect();
            push("reason", format!("Unsupported value: {reason}: supported values: {}", allowed.join(", ")));
        }
    }
    if !field_path.is_empty() && field_path.trim().is_empty() {
        push("fieldPath", "fieldPath must be non-empty if specified".to_string());
    }
    if field_path.contains(['\n', '\r']) {
        push("fieldPath", "fieldPath must not contain line breaks".to_string());
    } else if !field_path.trim().is_empty() && normalize_field_path(field_path.trim(), s).is_err() {
        push("fieldPath", "fieldPath must be a valid path".to_string());
    }
    if source.trim().is_empty() {
        return;
    }
    match compile(source).as_ref() {
        Err(e) => push("rule", format!("compilation failed: {e}")),
        Ok(compiled) => {
            if compiled.uses_old_self {
                if let Some(within) = uncorrelatable {
                    push("rule", format!("oldSelf cannot be used on the uncorrelatable portion of the schema within {within}"));
                }
            } else if rule.get("optionalOldSelf").is_some_and(|o| !o.is_null()) {
                push("optionalOldSelf", "may not be set if oldSelf is not used in rule".to_string());
            }
        }
    }
    if !message_expression.trim().is_empty()
        && let Err(e) = compile(message_expression).as_ref()
    {
        push("messageExpression", format!("messageExpression compilation failed: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes CEL libraries

type CelResult<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn register_k8s_libraries(env: &mut Env) -> Result<(), cel::DeclarationError> {
    let quantity = || Type::new_opaque_type(QUANTITY_TYPE_NAME);
    let url = || Type::new_opaque_type(URL_TYPE_NAME);

    // Lists.
    env.add_member_overload("isSorted", "list_is_sorted", LIST_TYPE, vec![], list_is_sorted)?;
    env.add_member_overload("sum", "list_sum", LIST_TYPE, vec![], list_sum)?;
    env.add_member_overload("min", "list_min", LIST_TYPE, vec![], list_min)?;
    env.add_member_overload("max", "list_max", LIST_TYPE, vec![], list_max)?;
    env.add_member_overload("indexOf", "list_index_of", LIST_TYPE, vec![DYN_TYPE], list_index_of)?;
    env.add_member_overload("lastIndexOf", "list_last_index_of", LIST_TYPE, vec![DYN_TYPE], list_last_index_of)?;

    // Regex.
    env.add_member_overload("find", "string_find_string", STRING_TYPE, vec![STRING_TYPE], string_find)?;
    env.add_member_overload("findAll", "string_find_all_string", STRING_TYPE, vec![STRING_TYPE], string_find_all)?;
    env.add_member_overload("findAll", "string_find_all_string_int", STRING_TYPE, vec![STRING_TYPE, INT_TYPE], string_find_all_n)?;

    // Sets.
    env.add_overload("sets.contains", "list_sets_contains_list", vec![LIST_TYPE, LIST_TYPE], sets_contains)?;
    env.add_overload("sets.equivalent", "list_sets_equivalent_list", vec![LIST_TYPE, LIST_TYPE], sets_equivalent)?;
    env.add_overload("sets.intersects", "list_sets_intersects_list", vec![LIST_TYPE, LIST_TYPE], sets_intersects)?;

    // URLs.
    env.add_overload("url", "string_to_url", vec![STRING_TYPE], url_parse)?;
    env.add_overload("isURL", "is_url_string", vec![STRING_TYPE], url_is)?;
    env.add_member_overload("getScheme", "url_get_scheme", url(), vec![], url_scheme)?;
    env.add_member_overload("getHost", "url_get_host", url(), vec![], url_host)?;
    env.add_member_overload("getHostname", "url_get_hostname", url(), vec![], url_hostname)?;
    env.add_member_overload("getPort", "url_get_port", url(), vec![], url_port)?;
    env.add_member_overload("getEscapedPath", "url_get_escaped_path", url(), vec![], url_path)?;
    env.add_member_overload("getQuery", "url_get_query", url(), vec![], url_query)?;

    // IP addresses and CIDRs.
    let ip = || Type::new_opaque_type(IP_TYPE_NAME);
    let cidr = || Type::new_opaque_type(CIDR_TYPE_NAME);
    env.add_overload("ip", "string_to_ip", vec![STRING_TYPE], ip_parse)?;
    env.add_overload("isIP", "is_ip", vec![STRING_TYPE], ip_is)?;
    env.add_overload("ip.isCanonical", "ip_is_canonical", vec![STRING_TYPE], ip_is_canonical)?;
    env.add_overload("string", "ip_to_string", vec![ip()], ip_string)?;
    env.add_member_overload("family", "ip_family", ip(), vec![], ip_family)?;
    env.add_member_overload("isUnspecified", "ip_is_unspecified", ip(), vec![], ip_is_unspecified)?;
    env.add_member_overload("isLoopback", "ip_is_loopback", ip(), vec![], ip_is_loopback)?;
    env.add_member_overload("isLinkLocalMulticast", "ip_is_link_local_multicast", ip(), vec![], ip_is_link_local_multicast)?;
    env.add_member_overload("isLinkLocalUnicast", "ip_is_link_local_unicast", ip(), vec![], ip_is_link_local_unicast)?;
    env.add_member_overload("isGlobalUnicast", "ip_is_global_unicast", ip(), vec![], ip_is_global_unicast)?;
    env.add_overload("cidr", "string_to_cidr", vec![STRING_TYPE], cidr_parse)?;
    env.add_overload("isCIDR", "is_cidr", vec![STRING_TYPE], cidr_is)?;
    env.add_overload("string", "cidr_to_string", vec![cidr()], cidr_string)?;
    env.add_member_overload("containsIP", "cidr_contains_ip_ip", cidr(), vec![ip()], cidr_contains_ip)?;
    env.add_member_overload("containsIP", "cidr_contains_ip_string", cidr(), vec![STRING_TYPE], cidr_contains_ip)?;
    env.add_member_overload("containsCIDR", "cidr_contains_cidr", cidr(), vec![cidr()], cidr_contains_cidr)?;
    env.add_member_overload("containsCIDR", "cidr_contains_cidr_string", cidr(), vec![STRING_TYPE], cidr_contains_cidr)?;
    env.add_member_overload("ip", "cidr_ip", cidr(), vec![], cidr_ip)?;
    env.add_member_overload("masked", "cidr_masked", cidr(), vec![], cidr_masked)?;
    env.add_member_overload("prefixLength", "cidr_prefix_length", cidr(), vec![], cidr_prefix_length)?;

    // Quantities.
    env.add_overload("quantity", "string_to_quantity", vec![STRING_TYPE], quantity_parse)?;
    env.add_overload("isQuantity", "is_quantity_string", vec![STRING_TYPE], quantity_is)?;
    env.add_member_overload("sign", "quantity_sign", quantity(), vec![], quantity_sign)?;
    env.add_member_overload("isInteger", "quantity_is_integer", quantity(), vec![], quantity_is_integer)?;
    env.add_member_overload("asInteger", "quantity_get_integer", quantity(), vec![], quantity_as_integer)?;
    env.add_member_overload("asApproximateFloat", "quantity_get_float", quantity(), vec![], quantity_as_float)?;
    env.add_member_overload("add", "quantity_add", quantity(), vec![quantity()], quantity_add)?;
    env.add_member_overload("add", "quantity_add_int", quantity(), vec![INT_TYPE], quantity_add)?;
    env.add_member_overload("sub", "quantity_sub", quantity(), vec![quantity()], quantity_sub)?;
    env.add_member_overload("sub", "quantity_sub_int", quantity(), vec![INT_TYPE], quantity_sub)?;
    env.add_member_overload("isGreaterThan", "quantity_is_greater_than", quantity(), vec![quantity()], quantity_greater)?;
    env.add_member_overload("isLessThan", "quantity_is_less_than", quantity(), vec![quantity()], quantity_less)?;
    env.add_member_overload("compareTo", "quantity_compare_to", quantity(), vec![quantity()], quantity_compare)?;
    Ok(())
}

fn arg(args: &[CowVal<'_, '_>], i: usize) -> Result<CelValue, ExecutionError> {
    let v = args.get(i).ok_or_else(|| ExecutionError::invalid_argument_count(i + 1, args.len()))?;
    CelValue::try_from(v.as_ref())
}

fn ret<'b, 'v>(v: CelValue) -> CelResult<'b, 'v> {
    let boxed: Box<dyn Val> = v.try_into()?;
    let boxed: Box<dyn Val + 'v> = boxed;
    Ok(CowVal::from(boxed))
}

fn overload(function: &str, args: &[&CelValue]) -> ExecutionError {
    ExecutionError::no_such_overload(function, args.iter().map(|a| a.type_of().to_string()).collect())
}

fn list_arg(args: &[CowVal<'_, '_>], i: usize, function: &str) -> Result<Arc<Vec<CelValue>>, ExecutionError> {
    match arg(args, i)? {
        CelValue::List(list) => Ok(list),
        other => Err(overload(function, &[&other])),
    }
}

fn string_arg(args: &[CowVal<'_, '_>], i: usize, function: &str) -> Result<Arc<String>, ExecutionError> {
    match arg(args, i)? {
        CelValue::String(s) => Ok(s),
        other => Err(overload(function, &[&other])),
    }
}

/// CEL ordering: numbers compare across int, uint and double; otherwise only like with like.
fn compare(a: &CelValue, b: &CelValue) -> Option<Ordering> {
    use CelValue::*;
    match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (UInt(x), UInt(y)) => Some(x.cmp(y)),
        (Int(x), UInt(y)) => Some((*x as i128).cmp(&(*y as i128))),
        (UInt(x), Int(y)) => Some((*x as i128).cmp(&(*y as i128))),
        (Float(x), Float(y)) => x.partial_cmp(y),
        (Int(x), Float(y)) => (*x as f64).partial_cmp(y),
        (Float(x), Int(y)) => x.partial_cmp(&(*y as f64)),
        (UInt(x), Float(y)) => (*x as f64).partial_cmp(y),
        (Float(x), UInt(y)) => x.partial_cmp(&(*y as f64)),
        (String(x), String(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Bytes(x), Bytes(y)) => Some(x.cmp(y)),
        (Timestamp(x), Timestamp(y)) => Some(x.cmp(y)),
        (Duration(x), Duration(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// CEL equality: numbers across types, lists and maps element by element.
fn equal(a: &CelValue, b: &CelValue) -> bool {
    use CelValue::*;
    match (a, b) {
        (Int(_) | UInt(_) | Float(_), Int(_) | UInt(_) | Float(_)) => compare(a, b) == Some(Ordering::Equal),
        (List(x), List(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| equal(p, q)),
        (Map(x), Map(y)) => x.map.len() == y.map.len() && x.map.iter().all(|(k, v)| y.map.get(k).is_some_and(|w| equal(v, w))),
        _ => a == b,
    }
}

fn list_is_sorted<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let list = list_arg(&args, 0, "isSorted")?;
    for pair in list.windows(2) {
        match compare(&pair[0], &pair[1]) {
            Some(Ordering::Greater) => return ret(CelValue::Bool(false)),
            Some(_) => {}
            None => return Err(overload("isSorted", &[&pair[0], &pair[1]])),
        }
    }
    ret(CelValue::Bool(true))
}

fn list_sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let list = list_arg(&args, 0, "sum")?;
    let mut total = match list.first() {
        None => return ret(CelValue::Int(0)),
        Some(first) => first.clone(),
    };
    for item in list.iter().skip(1) {
        total = match (&total, item) {
            (CelValue::Int(a), CelValue::Int(b)) => {
                CelValue::Int(a.checked_add(*b).ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?)
            }
            (CelValue::UInt(a), CelValue::UInt(b)) => {
                CelValue::UInt(a.checked_add(*b).ok_or_else(|| ExecutionError::function_error("sum", "unsigned integer overflow"))?)
            }
            (CelValue::Float(a), CelValue::Float(b)) => CelValue::Float(a + b),
            (CelValue::Duration(a), CelValue::Duration(b)) => {
                CelValue::Duration(a.checked_add(b).ok_or_else(|| ExecutionError::function_error("sum", "duration overflow"))?)
            }
            (a, b) => return Err(overload("sum", &[a, b])),
        };
    }
    match total {
        CelValue::Int(_) | CelValue::UInt(_) | CelValue::Float(_) | CelValue::Duration(_) => ret(total),
        other => Err(overload("sum", &[&other])),
    }
}

fn list_extreme<'b, 'v>(args: Vec<CowVal<'b, 'v>>, name: &str, keep: Ordering) -> CelResult<'b, 'v> {
    let list = list_arg(&args, 0, name)?;
    let mut best = list.first().ok_or_else(|| ExecutionError::function_error(name, format!("{name} called on empty list")))?;
    for item in list.iter().skip(1) {
        match compare(item, best) {
            Some(order) if order == keep => best = item,
            Some(_) => {}
            None => return Err(overload(name, &[item, best])),
        }
    }
    ret(best.clone())
}

fn list_min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    list_extreme(args, "min", Ordering::Less)
}

fn list_max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    list_extreme(args, "max", Ordering::Greater)
}

fn list_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let list = list_arg(&args, 0, "indexOf")?;
    let needle = arg(&args, 1)?;
    ret(CelValue::Int(list.iter().position(|v| equal(v, &needle)).map_or(-1, |i| i as i64)))
}

fn list_last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let list = list_arg(&args, 0, "lastIndexOf")?;
    let needle = arg(&args, 1)?;
    ret(CelValue::Int(list.iter().rposition(|v| equal(v, &needle)).map_or(-1, |i| i as i64)))
}

fn regex(pattern: &str, function: &str) -> Result<regex::Regex, ExecutionError> {
    static CACHE: OnceLock<Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(re) = cache.lock().ok().and_then(|m| m.get(pattern).cloned()) {
        return Ok(re);
    }
    let re = regex::Regex::new(pattern).map_err(|e| ExecutionError::function_error(function, e))?;
    if let Ok(mut m) = cache.lock() {
        if m.len() >= 256 {
            m.clear();
        }
        m.insert(pattern.to_string(), re.clone());
    }
    Ok(re)
}

fn string_find<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let text = string_arg(&args, 0, "find")?;
    let re = regex(&string_arg(&args, 1, "find")?, "find")?;
    ret(CelValue::from(re.find(&text).map(|m| m.as_str()).unwrap_or("")))
}

fn find_all<'b, 'v>(args: &[CowVal<'b, 'v>], limit: i64) -> CelResult<'b, 'v> {
    let text = string_arg(args, 0, "findAll")?;
    let re = regex(&string_arg(args, 1, "findAll")?, "findAll")?;
    let take = if limit < 0 { usize::MAX } else { limit as usize };
    let found: Vec<CelValue> = re.find_iter(&text).take(take).map(|m| CelValue::from(m.as_str())).collect();
    ret(CelValue::List(Arc::new(found)))
}

fn string_find_all<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    find_all(&args, -1)
}

fn string_find_all_n<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let limit = match arg(&args, 2)? {
        CelValue::Int(n) => n,
        other => return Err(overload("findAll", &[&other])),
    };
    find_all(&args, limit)
}

fn sets_contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (a, b) = (list_arg(&args, 0, "sets.contains")?, list_arg(&args, 1, "sets.contains")?);
    ret(CelValue::Bool(b.iter().all(|x| a.iter().any(|y| equal(x, y)))))
}

fn sets_equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (a, b) = (list_arg(&args, 0, "sets.equivalent")?, list_arg(&args, 1, "sets.equivalent")?);
    let within = |p: &[CelValue], q: &[CelValue]| p.iter().all(|x| q.iter().any(|y| equal(x, y)));
    ret(CelValue::Bool(within(&a, &b) && within(&b, &a)))
}

fn sets_intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (a, b) = (list_arg(&args, 0, "sets.intersects")?, list_arg(&args, 1, "sets.intersects")?);
    ret(CelValue::Bool(b.iter().any(|x| a.iter().any(|y| equal(x, y)))))
}

// URLs -----------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Url {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

impl Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        URL_TYPE_NAME
    }
}

impl Url {
    /// Parses an absolute URI (`scheme:...`) or an absolute path, as upstream's `url()` accepts.
    fn parse(s: &str) -> Result<Url, String> {
        let invalid = || format!("URL parse error during conversion from string: parse {s:?}: invalid URI for request");
        if s.is_empty() || s.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid());
        }
        let s = s.split_once('#').map_or(s, |(before, _)| before);
        let (rest, scheme) = if s.starts_with('/') {
            (s, String::new())
        } else {
            let (scheme, rest) = s.split_once(':').ok_or_else(invalid)?;
            let valid = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return Err(invalid());
            }
            (rest, scheme.to_string())
        };
        let (rest, query) = match rest.split_once('?') {
            Some((before, query)) => (before, query.to_string()),
            None => (rest, String::new()),
        };
        let (host, path) = match rest.strip_prefix("//") {
            Some(authority) => {
                let end = authority.find('/').unwrap_or(authority.len());
                let host = &authority[..end];
                let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                (host.to_string(), authority[end..].to_string())
            }
            None => (String::new(), rest.to_string()),
        };
        if scheme.is_empty() && !path.starts_with('/') {
            return Err(invalid());
        }
        Ok(Url { scheme, host, path, query })
    }

    fn hostname_and_port(&self) -> (&str, &str) {
        let host = self.host.as_str();
        if let Some(inner) = host.strip_prefix('[')
            && let Some((addr, rest)) = inner.split_once(']')
        {
            return (addr, rest.strip_prefix(':').unwrap_or(""));
        }
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => (name, port),
            _ => (host, ""),
        }
    }
}

fn with_url<'b, 'v>(args: Vec<CowVal<'b, 'v>>, function: &str, get: impl Fn(&Url) -> CelValue) -> CelResult<'b, 'v> {
    let opaque = opaque_arg::<Url>(&args, 0, function)?;
    let url = opaque.downcast_ref::<Url>().ok_or_else(|| ExecutionError::function_error(function, "not a URL"))?;
    ret(get(url))
}

fn url_parse<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let text = string_arg(&args, 0, "url")?;
    let url = Url::parse(&text).map_err(|e| ExecutionError::function_error("url", e))?;
    ret(CelValue::Opaque(Arc::new(url)))
}

fn url_is<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let text = string_arg(&args, 0, "isURL")?;
    ret(CelValue::Bool(Url::parse(&text).is_ok()))
}

fn url_scheme<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_url(args, "getScheme", |u| CelValue::from(u.scheme.as_str()))
}

fn url_host<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_url(args, "getHost", |u| CelValue::from(u.host.as_str()))
}

fn url_hostname<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_url(args, "getHostname", |u| CelValue::from(u.hostname_and_port().0))
}

fn url_port<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_url(args, "getPort", |u| CelValue::from(u.hostname_and_port().1))
}

fn url_path<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_url(args, "getEscapedPath", |u| CelValue::from(u.path.as_str()))
}

fn url_query<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_url(args, "getQuery", |u| {
        let mut query: HashMap<CelKey, Vec<CelValue>> = HashMap::new();
        for pair in u.query.split(['&', ';']).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            query.entry(CelKey::String(Arc::new(percent_decode(key)))).or_default().push(CelValue::from(percent_decode(value)));
        }
        let map = query.into_iter().map(|(k, v)| (k, CelValue::List(Arc::new(v)))).collect();
        CelValue::Map(CelValueMap { map: Arc::new(map) })
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// IP addresses and CIDRs -----------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Ip(IpAddr);

impl Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        IP_TYPE_NAME
    }
}

/// An address and prefix length as written (`10.0.0.1/8` keeps its host bits; see `masked`).
#[derive(Debug, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Opaque for Cidr {
    fn runtime_type_name(&self) -> &str {
        CIDR_TYPE_NAME
    }
}

fn parse_ip(raw: &str) -> Result<IpAddr, String> {
    if raw.contains('%') {
        return Err(format!("IP address {raw:?} with zone value is not allowed"));
    }
    let addr: IpAddr = raw.parse().map_err(|e| format!("IP Address {raw:?} parse error during conversion from string: {e}"))?;
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!("IPv4-mapped IPv6 address {raw:?} is not allowed"));
    }
    Ok(addr)
}

fn parse_cidr(raw: &str) -> Result<Cidr, String> {
    let invalid = || format!("network address parse error during conversion from string: netip.ParsePrefix({raw:?}): bad prefix");
    let (addr, bits) = raw.split_once('/').ok_or_else(invalid)?;
    let addr = parse_ip(addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if bits.is_empty() || (bits.len() > 1 && bits.starts_with('0')) || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let bits: u8 = bits.parse().map_err(|_| invalid())?;
    if bits > max {
        return Err(invalid());
    }
    Ok(Cidr { addr, bits })
}

fn masked(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits as u32) };
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits as u32) };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn contains(cidr: &Cidr, addr: IpAddr) -> bool {
    cidr.addr.is_ipv4() == addr.is_ipv4() && masked(cidr.addr, cidr.bits) == masked(addr, cidr.bits)
}

fn opaque_arg<T: Opaque + 'static>(args: &[CowVal<'_, '_>], i: usize, function: &str) -> Result<Arc<dyn Opaque>, ExecutionError> {
    match arg(args, i)? {
        CelValue::Opaque(o) if o.downcast_ref::<T>().is_some() => Ok(o),
        other => Err(overload(function, &[&other])),
    }
}

fn with_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>, function: &str, get: impl Fn(IpAddr) -> CelValue) -> CelResult<'b, 'v> {
    let opaque = opaque_arg::<Ip>(&args, 0, function)?;
    let ip = opaque.downcast_ref::<Ip>().ok_or_else(|| ExecutionError::function_error(function, "not an IP"))?;
    ret(get(ip.0))
}

fn with_cidr<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    function: &str,
    get: impl Fn(&Cidr, Option<CelValue>) -> Result<CelValue, ExecutionError>,
) -> CelResult<'b, 'v> {
    let opaque = opaque_arg::<Cidr>(&args, 0, function)?;
    let cidr = opaque.downcast_ref::<Cidr>().ok_or_else(|| ExecutionError::function_error(function, "not a CIDR"))?;
    let other = if args.len() > 1 { Some(arg(&args, 1)?) } else { None };
    ret(get(cidr, other)?)
}

fn ip_parse<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let addr = parse_ip(&string_arg(&args, 0, "ip")?).map_err(|e| ExecutionError::function_error("ip", e))?;
    ret(CelValue::Opaque(Arc::new(Ip(addr))))
}

fn ip_is<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    ret(CelValue::Bool(parse_ip(&string_arg(&args, 0, "isIP")?).is_ok()))
}

fn ip_is_canonical<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let raw = string_arg(&args, 0, "ip.isCanonical")?;
    let addr = parse_ip(&raw).map_err(|e| ExecutionError::function_error("ip.isCanonical", e))?;
    ret(CelValue::Bool(addr.to_string() == *raw))
}

fn ip_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "string", |ip| CelValue::from(ip.to_string()))
}

fn ip_family<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "family", |ip| CelValue::Int(if ip.is_ipv4() { 4 } else { 6 }))
}

fn ip_is_unspecified<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "isUnspecified", |ip| CelValue::Bool(ip.is_unspecified()))
}

fn ip_is_loopback<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "isLoopback", |ip| CelValue::Bool(ip.is_loopback()))
}

fn is_link_local_multicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    }
}

fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

fn ip_is_link_local_multicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "isLinkLocalMulticast", |ip| CelValue::Bool(is_link_local_multicast(ip)))
}

fn ip_is_link_local_unicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "isLinkLocalUnicast", |ip| CelValue::Bool(is_link_local_unicast(ip)))
}

fn ip_is_global_unicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_ip(args, "isGlobalUnicast", |ip| {
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        CelValue::Bool(!(broadcast || ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || is_link_local_unicast(ip)))
    })
}

fn cidr_parse<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let cidr = parse_cidr(&string_arg(&args, 0, "cidr")?).map_err(|e| ExecutionError::function_error("cidr", e))?;
    ret(CelValue::Opaque(Arc::new(cidr)))
}

fn cidr_is<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    ret(CelValue::Bool(parse_cidr(&string_arg(&args, 0, "isCIDR")?).is_ok()))
}

fn cidr_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_cidr(args, "string", |c, _| Ok(CelValue::from(format!("{}/{}", c.addr, c.bits))))
}

fn cidr_contains_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_cidr(args, "containsIP", |c, other| {
        let addr = match other {
            Some(CelValue::String(raw)) => parse_ip(&raw).map_err(|e| ExecutionError::function_error("containsIP", e))?,
            Some(CelValue::Opaque(o)) => {
                o.downcast_ref::<Ip>().map(|ip| ip.0).ok_or_else(|| ExecutionError::function_error("containsIP", "not an IP"))?
            }
            _ => return Err(ExecutionError::invalid_argument_count(2, 1)),
        };
        Ok(CelValue::Bool(contains(c, addr)))
    })
}

fn cidr_contains_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_cidr(args, "containsCIDR", |c, other| {
        let (addr, bits) = match other {
            Some(CelValue::String(raw)) => {
                let o = parse_cidr(&raw).map_err(|e| ExecutionError::function_error("containsCIDR", e))?;
                (o.addr, o.bits)
            }
            Some(CelValue::Opaque(o)) => {
                let o = o.downcast_ref::<Cidr>().ok_or_else(|| ExecutionError::function_error("containsCIDR", "not a CIDR"))?;
                (o.addr, o.bits)
            }
            _ => return Err(ExecutionError::invalid_argument_count(2, 1)),
        };
        Ok(CelValue::Bool(bits >= c.bits && contains(c, addr)))
    })
}

fn cidr_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_cidr(args, "ip", |c, _| Ok(CelValue::Opaque(Arc::new(Ip(c.addr)))))
}

fn cidr_masked<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_cidr(args, "masked", |c, _| Ok(CelValue::Opaque(Arc::new(Cidr { addr: masked(c.addr, c.bits), bits: c.bits }))))
}

fn cidr_prefix_length<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    with_cidr(args, "prefixLength", |c, _| Ok(CelValue::Int(c.bits as i64)))
}

// Quantities -----------------------------------------------------------------------------------

/// A resource quantity, exactly: `mantissa * 10^exponent`, normalized so that equal amounts are
/// equal values (`1Ki == 1024`, `0.5 == 500m`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Quantity {
    mantissa: i128,
    exponent: i32,
}

impl Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        QUANTITY_TYPE_NAME
    }
}

impl Quantity {
    fn new(mut mantissa: i128, mut exponent: i32) -> Quantity {
        if mantissa == 0 {
            return Quantity { mantissa: 0, exponent: 0 };
        }
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        Quantity { mantissa, exponent }
    }

    /// Parses Kubernetes' quantity syntax: a signed decimal number followed by a binary-SI suffix
    /// (`Ki`..`Ei`), a decimal-SI suffix (`n`, `u`, `m`, `k`, `M`..`E`) or an exponent (`e3`).
    fn parse(s: &str) -> Result<Quantity, String> {
        let invalid = || "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".to_string();
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(invalid());
        }
        let mut mantissa: i128 = 0;
        for d in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa.checked_mul(10).and_then(|m| m.checked_add((d - b'0') as i128)).ok_or_else(invalid)?;
        }
        let mut exponent = -(fraction.len() as i32);
        match suffix {
            "" => {}
            "n" => exponent -= 9,
            "u" => exponent -= 6,
            "m" => exponent -= 3,
            "k" => exponent += 3,
            "M" => exponent += 6,
            "G" => exponent += 9,
            "T" => exponent += 12,
            "P" => exponent += 15,
            "E" => exponent += 18,
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                let power = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().position(|p| *p == suffix).unwrap_or(0) as u32 + 1;
                mantissa = mantissa.checked_mul(1i128 << (10 * power)).ok_or_else(invalid)?;
            }
            _ => {
                let digits = suffix.strip_prefix(['e', 'E']).ok_or_else(invalid)?;
                let value: i32 = digits.parse().map_err(|_| invalid())?;
                if value.abs() > 1000 || digits.starts_with('+') && digits.len() == 1 {
                    return Err(invalid());
                }
                exponent += value;
            }
        }
        Ok(Quantity::new(if negative { -mantissa } else { mantissa }, exponent))
    }

    fn cmp(&self, other: &Quantity) -> Ordering {
        let (a, b) = (self.mantissa.signum(), other.mantissa.signum());
        if a != b || a == 0 {
            return a.cmp(&b);
        }
        match align(self, other) {
            Some((x, y, _)) => x.cmp(&y),
            // One side does not fit once aligned: it is the one with the larger magnitude.
            None => {
                let larger_magnitude = if self.exponent > other.exponent { Ordering::Greater } else { Ordering::Less };
                if a > 0 { larger_magnitude } else { larger_magnitude.reverse() }
            }
        }
    }

    fn as_i64(&self) -> Option<i64> {
        if self.exponent < 0 {
            return None;
        }
        let scale = 10i128.checked_pow(self.exponent as u32)?;
        i64::try_from(self.mantissa.checked_mul(scale)?).ok()
    }
}

/// Both mantissas scaled to the smaller exponent, or `None` when that overflows.
fn align(a: &Quantity, b: &Quantity) -> Option<(i128, i128, i32)> {
    let exponent = a.exponent.min(b.exponent);
    let scale = |q: &Quantity| q.mantissa.checked_mul(10i128.checked_pow((q.exponent - exponent) as u32)?);
    Some((scale(a)?, scale(b)?, exponent))
}

fn quantity_value(v: &CelValue) -> Option<Quantity> {
    match v {
        CelValue::Opaque(o) => o.downcast_ref::<Quantity>().cloned(),
        CelValue::Int(i) => Some(Quantity::new(*i as i128, 0)),
        _ => None,
    }
}

fn quantity_args(args: &[CowVal<'_, '_>], function: &str) -> Result<(Quantity, Option<Quantity>), ExecutionError> {
    let first = arg(args, 0)?;
    let this = quantity_value(&first).filter(|_| matches!(first, CelValue::Opaque(_))).ok_or_else(|| overload(function, &[&first]))?;
    if args.len() < 2 {
        return Ok((this, None));
    }
    let second = arg(args, 1)?;
    let other = quantity_value(&second).ok_or_else(|| overload(function, &[&first, &second]))?;
    Ok((this, Some(other)))
}

fn quantity_parse<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let text = string_arg(&args, 0, "quantity")?;
    let q = Quantity::parse(&text).map_err(|e| ExecutionError::function_error("quantity", e))?;
    ret(CelValue::Opaque(Arc::new(q)))
}

fn quantity_is<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let text = string_arg(&args, 0, "isQuantity")?;
    ret(CelValue::Bool(Quantity::parse(&text).is_ok()))
}

fn quantity_sign<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (q, _) = quantity_args(&args, "sign")?;
    ret(CelValue::Int(q.mantissa.signum() as i64))
}

fn quantity_is_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (q, _) = quantity_args(&args, "isInteger")?;
    ret(CelValue::Bool(q.as_i64().is_some()))
}

fn quantity_as_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (q, _) = quantity_args(&args, "asInteger")?;
    let i = q.as_i64().ok_or_else(|| ExecutionError::function_error("asInteger", "cannot convert value to integer"))?;
    ret(CelValue::Int(i))
}

fn quantity_as_float<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    let (q, _) = quantity_args(&args, "asApproximateFloat")?;
    ret(CelValue::Float(q.mantissa as f64 * 10f64.powi(q.exponent)))
}

fn quantity_sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>, function: &str, negate: bool) -> CelResult<'b, 'v> {
    let (a, b) = quantity_args(&args, function)?;
    let b = b.ok_or_else(|| ExecutionError::invalid_argument_count(2, args.len()))?;
    let b = Quantity { mantissa: if negate { -b.mantissa } else { b.mantissa }, exponent: b.exponent };
    let (x, y, exponent) = align(&a, &b).ok_or_else(|| ExecutionError::function_error(function, "quantity overflow"))?;
    let sum = x.checked_add(y).ok_or_else(|| ExecutionError::function_error(function, "quantity overflow"))?;
    ret(CelValue::Opaque(Arc::new(Quantity::new(sum, exponent))))
}

fn quantity_add<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    quantity_sum(args, "add", false)
}

fn quantity_sub<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    quantity_sum(args, "sub", true)
}

fn quantity_order(args: &[CowVal<'_, '_>], function: &str) -> Result<Ordering, ExecutionError> {
    let (a, b) = quantity_args(args, function)?;
    let b = b.ok_or_else(|| ExecutionError::invalid_argument_count(2, args.len()))?;
    Ok(a.cmp(&b))
}

fn quantity_greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    ret(CelValue::Bool(quantity_order(&args, "isGreaterThan")? == Ordering::Greater))
}

fn quantity_less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    ret(CelValue::Bool(quantity_order(&args, "isLessThan")? == Ordering::Less))
}

fn quantity_compare<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> CelResult<'b, 'v> {
    ret(CelValue::Int(quantity_order(&args, "compareTo")? as i64))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A CRD schema whose `spec` carries `rules` and whose properties are `props`.
    fn spec_schema(rules: Value, props: Value) -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": { "type": "object", "x-kubernetes-validations": rules, "properties": props }
            }
        })
    }

    fn replicas_schema(rule: Value) -> Value {
        spec_schema(json!([rule]), json!({ "minReplicas": { "type": "integer" }, "maxReplicas": { "type": "integer" } }))
    }

    fn object(spec: Value) -> Value {
        json!({ "apiVersion": "example.com/v1", "kind": "Widget", "metadata": { "name": "w", "namespace": "default" }, "spec": spec })
    }

    fn messages(causes: &[Cause]) -> Vec<String> {
        causes.iter().map(|c| format!("{} {}: {}", c.reason, c.field, c.message)).collect()
    }

    #[test]
    fn simple_rule_passes_and_fails() {
        let schema = replicas_schema(json!({ "rule": "self.minReplicas <= self.maxReplicas" }));
        assert!(validate(&schema, &object(json!({ "minReplicas": 1, "maxReplicas": 3 })), None).is_empty());
        let causes = validate(&schema, &object(json!({ "minReplicas": 5, "maxReplicas": 3 })), None);
        assert_eq!(
            messages(&causes),
            ["FieldValueInvalid spec: Invalid value: \"object\": failed rule: self.minReplicas <= self.maxReplicas"]
        );
    }

    #[test]
    fn message_and_message_expression() {
        let schema = replicas_schema(json!({ "rule": "self.minReplicas <= self.maxReplicas", "message": "min must not exceed max" }));
        let causes = validate(&schema, &object(json!({ "minReplicas": 5, "maxReplicas": 3 })), None);
        assert_eq!(messages(&causes), ["FieldValueInvalid spec: Invalid value: \"object\": min must not exceed max"]);

        let schema = replicas_schema(json!({
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "static",
            "messageExpression": "'minReplicas ' + string(self.minReplicas) + ' exceeds maxReplicas ' + string(self.maxReplicas)",
        }));
        let causes = validate(&schema, &object(json!({ "minReplicas": 5, "maxReplicas": 3 })), None);
        assert_eq!(messages(&causes), ["FieldValueInvalid spec: Invalid value: \"object\": minReplicas 5 exceeds maxReplicas 3"]);

        // A messageExpression that fails falls back to the message.
        let schema = replicas_schema(json!({
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "static",
            "messageExpression": "self.nothing",
        }));
        let causes = validate(&schema, &object(json!({ "minReplicas": 5, "maxReplicas": 3 })), None);
        assert_eq!(messages(&causes), ["FieldValueInvalid spec: Invalid value: \"object\": static"]);
    }

    #[test]
    fn transition_rule_only_on_update() {
        let schema = spec_schema(
            json!([]),
            json!({ "immutable": { "type": "string", "x-kubernetes-validations": [{ "rule": "self == oldSelf", "message": "is immutable" }] } }),
        );
        let created = object(json!({ "immutable": "a" }));
        assert!(validate(&schema, &created, None).is_empty());
        assert!(validate(&schema, &created, Some(&created)).is_empty());
        let changed = object(json!({ "immutable": "b" }));
        let causes = validate(&schema, &changed, Some(&created));
        assert_eq!(messages(&causes), ["FieldValueInvalid spec.immutable: Invalid value: \"string\": is immutable"]);
        // Set on update where it was absent before: no old value, so the rule does not run.
        assert!(validate(&schema, &changed, Some(&object(json!({})))).is_empty());
    }

    #[test]
    fn optional_old_self_runs_without_old_value() {
        let schema = spec_schema(
            json!([]),
            json!({ "name": { "type": "string", "x-kubernetes-validations": [{
                "rule": "!oldSelf.hasValue() || self == oldSelf.value()", "optionalOldSelf": true, "message": "may only be set once"
            }] } }),
        );
        let first = object(json!({ "name": "a" }));
        assert!(validate(&schema, &first, None).is_empty());
        assert!(validate(&schema, &first, Some(&object(json!({})))).is_empty());
        assert_eq!(validate(&schema, &object(json!({ "name": "b" })), Some(&first)).len(), 1);
    }

    #[test]
    fn unchanged_values_ratchet() {
        let schema = spec_schema(
            json!([{ "rule": "self.x > 0", "message": "x must be positive" }]),
            json!({
                "x": { "type": "integer" },
                "tags": { "type": "array", "items": { "type": "string", "x-kubernetes-validations": [{ "rule": "self != ''" }] } }
            }),
        );
        let old = object(json!({ "x": 0, "tags": ["", "a"] }));
        assert_eq!(validate(&schema, &old, None).len(), 2);
        // Only metadata changed: spec and its items keep failing, but are not reported.
        let mut relabeled = old.clone();
        relabeled["metadata"]["labels"] = json!({ "a": "b" });
        assert!(validate(&schema, &relabeled, Some(&old)).is_empty());
        // A changed value is reported; items of a changed atomic list are too.
        let changed = object(json!({ "x": -1, "tags": ["", "b"] }));
        assert_eq!(
            messages(&validate(&schema, &changed, Some(&old))),
            [
                "FieldValueInvalid spec: Invalid value: \"object\": x must be positive",
                "FieldValueInvalid spec.tags[0]: Invalid value: \"string\": failed rule: self != ''"
            ]
        );
    }

    #[test]
    fn rule_inside_array_items() {
        let schema = spec_schema(
            json!([]),
            json!({ "ports": { "type": "array", "items": {
                "type": "object",
                "properties": { "port": { "type": "integer" }, "name": { "type": "string" } },
                "x-kubernetes-validations": [{ "rule": "self.port > 0 && self.port < 65536", "message": "port out of range" }]
            } } }),
        );
        let obj = object(json!({ "ports": [{ "port": 80 }, { "port": 0 }, { "port": 70000 }] }));
        assert_eq!(
            messages(&validate(&schema, &obj, None)),
            [
                "FieldValueInvalid spec.ports[1]: Invalid value: \"object\": port out of range",
                "FieldValueInvalid spec.ports[2]: Invalid value: \"object\": port out of range"
            ]
        );
    }

    #[test]
    fn map_list_items_correlate_by_key() {
        let schema = spec_schema(
            json!([]),
            json!({ "ports": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "properties": { "port": { "type": "integer" }, "name": { "type": "string" } },
                    "x-kubernetes-validations": [{ "rule": "self.port == oldSelf.port", "message": "port is immutable" }]
                }
            } }),
        );
        let old = object(json!({ "ports": [{ "name": "http", "port": 80 }, { "name": "https", "port": 443 }] }));
        // Reordered and one added: still matched by name, the new one has no oldSelf.
        let new =
            object(json!({ "ports": [{ "name": "dns", "port": 53 }, { "name": "https", "port": 443 }, { "name": "http", "port": 80 }] }));
        assert!(validate(&schema, &new, Some(&old)).is_empty());
        let new = object(json!({ "ports": [{ "name": "https", "port": 8443 }, { "name": "http", "port": 80 }] }));
        assert_eq!(
            messages(&validate(&schema, &new, Some(&old))),
            ["FieldValueInvalid spec.ports[0]: Invalid value: \"object\": port is immutable"]
        );
    }

    #[test]
    fn rule_under_additional_properties() {
        let schema = spec_schema(
            json!([{ "rule": "self.labels.all(k, k.size() <= 5)", "message": "keys too long" }]),
            json!({ "labels": { "type": "object", "additionalProperties": {
                "type": "string",
                "x-kubernetes-validations": [{ "rule": "self.startsWith('x')", "message": "must start with x" }]
            } } }),
        );
        let obj = object(json!({ "labels": { "a": "xa", "b": "yb", "longer": "xz" } }));
        assert_eq!(
            messages(&validate(&schema, &obj, None)),
            [
                "FieldValueInvalid spec: Invalid value: \"object\": keys too long",
                "FieldValueInvalid spec.labels[b]: Invalid value: \"string\": must start with x"
            ]
        );
    }

    #[test]
    fn root_rules_field_path_and_reason() {
        let schema = json!({
            "type": "object",
            "x-kubernetes-validations": [
                { "rule": "self.metadata.name.startsWith('w')", "message": "bad name" },
                { "rule": "self.spec.x > 0", "fieldPath": ".spec.x", "reason": "FieldValueForbidden", "message": "must be positive" },
                { "rule": "has(self.spec.y)", "fieldPath": ".spec['y']", "reason": "FieldValueRequired", "message": "y is required" },
                { "rule": "self.apiVersion == 'example.com/v1' && self.kind == 'Widget'" },
                { "rule": "!has(self.metadata.namespace)" },
            ],
            "properties": { "spec": { "type": "object", "properties": { "x": { "type": "integer" }, "y": { "type": "string" } } } }
        });
        assert_eq!(validate(&schema, &object(json!({ "x": 1, "y": "" })), None).len(), 0);
        let mut obj = object(json!({ "x": 0 }));
        obj["metadata"]["name"] = json!("v");
        assert_eq!(
            messages(&validate(&schema, &obj, None)),
            [
                "FieldValueInvalid <nil>: Invalid value: \"object\": bad name",
                "FieldValueForbidden spec.x: Forbidden: must be positive",
                "FieldValueRequired spec.y: Required value: y is required"
            ]
        );
    }

    #[test]
    fn evaluation_errors_do_not_panic() {
        let schema = spec_schema(
            json!([
                { "rule": "self.missing == 1" },
                { "rule": "self.name + 1 == 2", "message": "typed" },
                { "rule": "10 / self.zero == 1" },
                { "rule": "self.list[5] == 1" },
                { "rule": "self.name.matches('[')" },
                { "rule": "quantity(self.name).isInteger()" },
                { "rule": "self.name" },
            ]),
            json!({ "name": { "type": "string" }, "zero": { "type": "integer" }, "list": { "type": "array", "items": { "type": "integer" } } }),
        );
        let causes = validate(&schema, &object(json!({ "name": "n", "zero": 0, "list": [1] })), None);
        let got = messages(&causes);
        assert_eq!(got.len(), 7, "{got:#?}");
        assert_eq!(got[0], "FieldValueInvalid spec: Invalid value: \"object\": no such key: missing evaluating rule: self.missing == 1");
        assert_eq!(
            got[1],
            "FieldValueInvalid spec: Invalid value: \"object\": 'no such overload': call arguments did not match a supported operator, function or macro signature for rule: typed"
        );
        assert_eq!(got[2], "FieldValueInvalid spec: Invalid value: \"object\": division by zero evaluating rule: 10 / self.zero == 1");
        assert!(got[3].contains("evaluating rule: self.list[5] == 1"), "{}", got[3]);
        assert!(got[4].contains("rule compile error: compilation failed: ERROR: <input>: invalid regex in 'matches'"), "{}", got[4]);
        assert!(got[5].contains("quantities must match"), "{}", got[5]);
        assert_eq!(got[6], "FieldValueInvalid spec: Invalid value: \"object\": failed rule: self.name");
    }

    #[test]
    fn check_rules_reports_broken_rules() {
        let schema = json!({
            "type": "object",
            "x-kubernetes-validations": [{ "rule": "self.spec.a >" }],
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        { "rule": "self.a == 1" },
                        { "rule": "self.a.nope()" },
                        { "rule": "undefinedVar == 1" },
                        { "rule": "self.a > 0", "reason": "Bogus", "fieldPath": ".nothing" },
                        { "rule": "self.a > 0", "messageExpression": "'x' +" },
                        { "rule": "self.a > 0", "optionalOldSelf": true },
                        { "rule": "self.list.all(x, x > 0) && sets.contains(self.list, [1]) && quantity('1Gi').isLessThan(quantity('2Gi'))" },
                    ],
                    "properties": {
                        "a": { "type": "integer" },
                        "list": { "type": "array", "items": { "type": "integer", "x-kubernetes-validations": [{ "rule": "self == oldSelf" }] } }
                    }
                }
            }
        });
        let got = check_rules(&schema);
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "x-kubernetes-validations[0].rule",
                "properties[spec].x-kubernetes-validations[1].rule",
                "properties[spec].x-kubernetes-validations[2].rule",
                "properties[spec].x-kubernetes-validations[3].reason",
                "properties[spec].x-kubernetes-validations[3].fieldPath",
                "properties[spec].x-kubernetes-validations[4].messageExpression",
                "properties[spec].x-kubernetes-validations[5].optionalOldSelf",
                "properties[spec].properties[list].items.x-kubernetes-validations[0].rule",
            ],
            "{got:#?}"
        );
        assert!(got[0].1.starts_with("compilation failed: ERROR: <input>:1:"), "{}", got[0].1);
        assert_eq!(got[1].1, "compilation failed: ERROR: <input>: undeclared reference to 'nope' (in container '')");
        assert!(got[2].1.contains("undeclared reference to 'undefinedVar'"), "{}", got[2].1);
        assert_eq!(got[7].1, "oldSelf cannot be used on the uncorrelatable portion of the schema within properties[spec].properties[list]");

        // A rule that does not compile is reported at validation too, and nothing panics.
        let causes = validate(&schema, &object(json!({ "a": 1 })), None);
        assert!(causes.iter().any(|c| c.field == "<nil>" && c.message.contains("rule compile error")), "{:#?}", messages(&causes));
    }

    #[test]
    fn escaped_property_names_and_int_or_string() {
        let schema = spec_schema(
            json!([
                { "rule": "self.foo__dash__bar == 'x' && self.__namespace__ == 'ns' && self.a__dot__b == 1" },
                { "rule": "type(self.port) == int ? self.port > 0 : self.port.endsWith('%')" },
                { "rule": "self.ratio > 0.5 && self.ratio == 1" },
            ]),
            json!({
                "foo-bar": { "type": "string" },
                "namespace": { "type": "string" },
                "a.b": { "type": "integer" },
                "port": { "x-kubernetes-int-or-string": true },
                "ratio": { "type": "number" }
            }),
        );
        let ok = object(json!({ "foo-bar": "x", "namespace": "ns", "a.b": 1, "port": 8080, "ratio": 1 }));
        assert!(validate(&schema, &ok, None).is_empty(), "{:#?}", messages(&validate(&schema, &ok, None)));
        let ok = object(json!({ "foo-bar": "x", "namespace": "ns", "a.b": 1, "port": "50%", "ratio": 1 }));
        assert!(validate(&schema, &ok, None).is_empty(), "{:#?}", messages(&validate(&schema, &ok, None)));
        let bad = object(json!({ "foo-bar": "x", "namespace": "ns", "a.b": 1, "port": "50", "ratio": 1 }));
        assert_eq!(validate(&schema, &bad, None).len(), 1);
    }

    #[test]
    fn kubernetes_functions() {
        let rules = [
            "self.name.lowerAscii() == 'abc-def' && self.name.upperAscii() == 'ABC-DEF'",
            "self.name.split('-') == ['aBc', 'dEf'] && ['a', 'b'].join('/') == 'a/b'",
            "self.name.indexOf('-') == 3 && '  x '.trim() == 'x' && self.name.replace('-', '_') == 'aBc_dEf'",
            "self.name.startsWith('aB') && self.name.endsWith('Ef') && self.name.contains('c-d')",
            "self.name.matches('^[a-zA-Z-]+$') && self.name.find('[A-Z]') == 'B' && self.name.findAll('[A-Z]') == ['B', 'E']",
            "self.list.isSorted() && self.list.sum() == 6 && self.list.min() == 1 && self.list.max() == 3",
            "self.list.indexOf(2) == 1 && self.list.lastIndexOf(9) == -1 && 2 in self.list && size(self.list) == 3",
            "self.list.exists(x, x == 2) && self.list.exists_one(x, x > 2) && self.list.map(x, x * 2) == [2, 4, 6]",
            "self.list.filter(x, x > 1).size() == 2 && !['b', 'a'].isSorted()",
            "sets.contains(self.list, [1, 3]) && sets.intersects(self.list, [3, 9]) && sets.equivalent([1, 2, 3], self.list)",
            "quantity(self.mem).isGreaterThan(quantity('1G')) && quantity(self.mem) == quantity('1024Mi')",
            "quantity(self.mem).compareTo(quantity('1Gi')) == 0 && quantity('500m').add(quantity('0.5')) == quantity('1')",
            "quantity('1.5').isInteger() == false && quantity('2k').asInteger() == 2000 && quantity('-1').sign() == -1",
            "isQuantity('10Mi') && !isQuantity('ten') && quantity('1').sub(1).sign() == 0 && quantity('1Ki').asApproximateFloat() == 1024.0",
            "url(self.endpoint).getScheme() == 'https' && url(self.endpoint).getHost() == 'example.com:8443'",
            "url(self.endpoint).getHostname() == 'example.com' && url(self.endpoint).getPort() == '8443'",
            "url(self.endpoint).getEscapedPath() == '/a/b' && url(self.endpoint).getQuery() == {'x': ['1', '2'], 'y': ['z']}",
            "isURL('/path') && !isURL('not a url') && url('https://[::1]:80/').getHostname() == '::1'",
            "isIP('10.0.0.1') && !isIP('10.0.0.256') && !isIP('::ffff:1.2.3.4') && ip('fe80::1').isLinkLocalUnicast()",
            "ip('10.1.2.3').family() == 4 && ip('::1').isLoopback() && ip('8.8.8.8').isGlobalUnicast() && !ip('0.0.0.0').isGlobalUnicast()",
            "ip.isCanonical('2001:db8::1') && !ip.isCanonical('2001:DB8::1') && string(ip('10.0.0.1')) == '10.0.0.1'",
            "cidr('10.0.0.0/8').containsIP('10.1.2.3') && !cidr('10.0.0.0/8').containsIP(ip('11.0.0.1')) && cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')",
            "string(cidr('10.1.2.3/8').masked()) == '10.0.0.0/8' && cidr('10.1.2.3/8').prefixLength() == 8 && cidr('::1/128').ip() == ip('::1')",
            "isCIDR('192.168.0.0/16') && !isCIDR('192.168.0.0/33') && !isCIDR('192.168.0.0')",
            "duration(self.timeout) < duration('1h') && self.created < timestamp('2030-01-01T00:00:00Z') && self.timeout == duration('90s')",
            "self.blob == b'hello' && size(self.blob) == 5 && [duration('1s'), duration('2s')].sum() == duration('3s')",
        ];
        let rule_list: Vec<Value> = rules.iter().map(|r| json!({ "rule": r })).collect();
        let schema = spec_schema(
            Value::from(rule_list),
            json!({
                "name": { "type": "string" },
                "mem": { "type": "string" },
                "endpoint": { "type": "string" },
                "timeout": { "type": "string", "format": "duration" },
                "created": { "type": "string", "format": "date-time" },
                "blob": { "type": "string", "format": "byte" },
                "list": { "type": "array", "items": { "type": "integer" } }
            }),
        );
        let obj = object(json!({
            "name": "aBc-dEf", "mem": "1Gi", "endpoint": "https://example.com:8443/a/b?x=1&x=2&y=z", "list": [1, 2, 3],
            "timeout": "1m30s", "created": "2024-05-01T12:00:00Z", "blob": "aGVsbG8="
        }));
        let causes = validate(&schema, &obj, None);
        assert!(causes.is_empty(), "{:#?}", messages(&causes));
        assert!(check_rules(&schema).is_empty(), "{:#?}", check_rules(&schema));
    }

    #[test]
    fn upstream_features_missing_here_are_accepted_and_skipped() {
        let schema = spec_schema(
            json!([
                { "rule": "self.labels.all(k, v, k.size() < 10 && v != '')" },
                { "rule": "!format.dns1123Label().validate(self.name).hasValue()" },
                { "rule": "isSemver(self.version) && semver(self.version).major() >= 1" },
                { "rule": "self.name != 'bad'" },
            ]),
            json!({
                "name": { "type": "string" },
                "version": { "type": "string" },
                "labels": { "type": "object", "additionalProperties": { "type": "string" } }
            }),
        );
        assert!(check_rules(&schema).is_empty(), "{:#?}", check_rules(&schema));
        let obj = object(json!({ "name": "bad", "version": "x", "labels": { "a": "" } }));
        assert_eq!(
            messages(&validate(&schema, &obj, None)),
            ["FieldValueInvalid spec: Invalid value: \"object\": failed rule: self.name != 'bad'"]
        );
    }

    #[test]
    fn cost_guard_refuses_huge_evaluations() {
        let schema = spec_schema(
            json!([
                { "rule": "self.list.all(x, self.list.all(y, self.list.all(z, x + y + z >= 0)))" },
                { "rule": "size(self.list) > 0" },
            ]),
            json!({ "list": { "type": "array", "items": { "type": "integer" } } }),
        );
        let big: Vec<i64> = (0..5000).collect();
        let started = std::time::Instant::now();
        let causes = validate(&schema, &object(json!({ "list": big })), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(
            messages(&causes),
            [
                "FieldValueInvalid spec: Invalid value: \"object\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: self.list.all(x, self.list.all(y, self.list.all(z, x + y + z >= 0)))"
            ]
        );
        // Small enough lists still run.
        assert!(validate(&schema, &object(json!({ "list": [1, 2, 3] })), None).is_empty());
    }

    #[test]
    fn deep_expressions_are_refused_not_overflowed() {
        let deep = vec!["1"; 5000].join(" + ") + " > 0";
        let schema = spec_schema(json!([{ "rule": deep }]), json!({}));
        assert_eq!(check_rules(&schema).len(), 1);
        let causes = validate(&schema, &object(json!({})), None);
        assert_eq!(causes.len(), 1);
        // The longest chain a rule may spell parses (on its own thread) and is refused.
        let longest = vec!["1"; 49_990].join("+") + ">0";
        assert!(longest.len() <= MAX_RULE_LEN);
        let schema = spec_schema(json!([{ "rule": longest }]), json!({}));
        assert!(check_rules(&schema)[0].1.contains("recursion limit"), "{:?}", check_rules(&schema));
        assert_eq!(validate(&schema, &object(json!({})), None).len(), 1);
        // Shallow enough is fine.
        let fine = vec!["1"; 200].join(" + ") + " > 0";
        assert!(check_rules(&spec_schema(json!([{ "rule": fine }]), json!({}))).is_empty());
        let nested = "(".repeat(500) + "1" + &")".repeat(500) + " == 1";
        let schema = spec_schema(json!([{ "rule": nested }]), json!({}));
        assert_eq!(check_rules(&schema).len(), 1);
    }

    #[test]
    fn quantities_parse_exactly() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1E"), q("1000P"));
        assert_eq!(q("+1.50"), q("1.5"));
        assert_eq!(q("1Ei").cmp(&q("1E")), Ordering::Greater);
        assert_eq!(q("1e1000").cmp(&q("1")), Ordering::Greater);
        assert_eq!(q("-1e1000").cmp(&q("1")), Ordering::Less);
        for bad in ["", "abc", "1.2.3", "1Zi", "1 Gi", ".", "1e"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaping_matches_upstream() {
        assert_eq!(escape("foo").as_deref(), Some("foo"));
        assert_eq!(escape("foo-bar").as_deref(), Some("foo__dash__bar"));
        assert_eq!(escape("a.b/c").as_deref(), Some("a__dot__b__slash__c"));
        assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
        assert_eq!(escape("a_b").as_deref(), Some("a_b"));
        assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
        assert_eq!(escape("1abc"), None);
        assert_eq!(escape("a b"), None);
    }
}
