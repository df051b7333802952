//! The Stripe parameter table (`proxy/src/adapters/params/stripe.txt`) against Stripe's own
//! description of its API, as the official Python SDK installed by `scripts/install-deps` ships
//! it (request TypedDicts generated from github.com/stripe/openapi): every parameter a row accepts
//! is one Stripe documents for that method and path, and every parameter Stripe documents that
//! reaches a connected account, expands linked objects, applies a discount or sets a default
//! payment method is gated, at any depth. Fails (never skips) without python3 and the SDK.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail, ensure};
use keybrake_proxy::adapters::params;
use serde::Deserialize;

/// The SDK the table was derived from (its header says so too).
const SDK_VERSION: &str = "16.1.0";

/// Reads `["METHOD /path", ...]` on stdin; prints, for each, the parameters of the TypedDict the
/// SDK's service method for that method and path takes: the top-level names, and every nested
/// name in bracket form. The method and path come from the service's own `_request` call, so no
/// mapping from endpoints to class names is kept here.
const SDK_READER: &str = r#"
import ast, importlib, json, os, re, sys
import typing_extensions
import stripe
from stripe._request_options import RequestOptions

OPTIONS = set(RequestOptions.__optional_keys__) | set(RequestOptions.__required_keys__)
root = os.path.dirname(stripe.__file__)
wanted = set(json.load(sys.stdin))

found = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith("_service.py"):
            continue
        tree = ast.parse(open(os.path.join(dirpath, f), encoding="utf-8").read())
        imports = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stripe.params"):
                for a in node.names:
                    imports[a.asname or a.name] = node.module
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            ptype = None
            for a in fn.args.args + fn.args.kwonlyargs:
                if a.arg == "params" and a.annotation is not None:
                    m = re.search(r"([A-Za-z_]+Params)\b", ast.unparse(a.annotation))
                    ptype = m and m.group(1)
            if ptype not in imports:
                continue
            for call in ast.walk(fn):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "_request" and len(call.args) >= 2):
                    continue
                path = call.args[1]
                if isinstance(path, ast.Call):
                    path = path.func.value
                key = call.args[0].value.upper() + " " + re.sub(r"\{[a-z_]+\}", "{id}", path.value)
                if key in wanted:
                    found.setdefault(key, set()).add((imports[ptype], ptype))

def typeddicts(t, ns):
    if isinstance(t, typing_extensions.ForwardRef):
        t = t.__forward_arg__
    if isinstance(t, str):
        for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", t):
            v = ns.get(ident)
            if v is not None and typing_extensions.is_typeddict(v):
                yield v
        return
    if typing_extensions.is_typeddict(t):
        yield t
        return
    for a in typing_extensions.get_args(t):
        yield from typeddicts(a, ns)

def names(cls):
    return (set(cls.__required_keys__) | set(cls.__optional_keys__)) - OPTIONS

def nested(cls, prefix, seen, acc):
    if cls in seen:
        return
    seen = seen | {cls}
    ns = vars(sys.modules[cls.__module__])
    for k in names(cls):
        name = f"{prefix}[{k}]" if prefix else k
        acc.add(name)
        for sub in typeddicts(cls.__annotations__.get(k), ns):
            nested(sub, name, seen, acc)

out = {}
for key, classes in found.items():
    top, deep = set(), set()
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        top |= names(cls)
        nested(cls, "", frozenset(), deep)
    out[key] = {"top": sorted(top), "nested": sorted(deep)}
print(json.dumps({"version": stripe.VERSION, "rows": out}))
"#;

#[derive(Deserialize)]
struct Sdk {
    version: String,
    rows: BTreeMap<String, Described>,
}

#[derive(Deserialize)]
struct Described {
    top: BTreeSet<String>,
    nested: BTreeSet<String>,
}

fn sdk(rows: &[String]) -> Result<Sdk> {
    let mut child = Command::new("python3")
        .args(["-c", SDK_READER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(&serde_json::to_vec(rows)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "reading the Stripe SDK failed (pip install stripe=={SDK_VERSION}; scripts/install-deps does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Words of Stripe's parameter names that reach connected accounts, expand linked objects, apply
/// discounts or set default payment methods; kept here, apart from the table, so a name the
/// vendor adds in these families fails this test until the table gates it.
fn sensitive(key: &str) -> bool {
    const EXACT: [&str; 3] = ["account", "customer_account", "expand"];
    const WORDS: [&str; 10] = [
        "on_behalf_of",
        "transfer_data",
        "transfer_group",
        "application_fee",
        "reverse_transfer",
        "coupon",
        "discount",
        "promotion_code",
        "default_payment_method",
        "default_source",
    ];
    EXACT.contains(&key) || WORDS.iter().any(|w| key.contains(w))
}

/// Names in those families that do none of it, each with why.
const HARMLESS: [(&str, &str); 3] = [
    (
        "discountable",
        "whether discounts already on the invoice apply to the item",
    ),
    ("proration_discounts", "how existing discounts are prorated"),
    (
        "discount_amount",
        "amount_details reporting for card networks; charges nothing less",
    ),
];

#[test]
fn the_stripe_table_is_what_stripe_documents() -> Result<()> {
    let table = params::stripe_table().map_err(|e| anyhow::anyhow!("{e}"))?;
    let header = std::fs::read_to_string(
        keybrake_e2e::workspace_root().join("proxy/src/adapters/params/stripe.txt"),
    )?;
    ensure!(
        header.contains(&format!("stripe=={SDK_VERSION}")),
        "params/stripe.txt does not name stripe=={SDK_VERSION} as its source"
    );
    let keys: Vec<String> = table
        .rows
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let sdk = sdk(&keys)?;
    ensure!(
        sdk.version == SDK_VERSION,
        "the installed Stripe SDK is {}, the table was derived from {SDK_VERSION}: re-derive the table, then bump both",
        sdk.version
    );
    let mut wrong = Vec::new();
    for (row, key) in table.rows.iter().zip(&keys) {
        let Some(described) = sdk.rows.get(key) else {
            wrong.push(format!("{key}: the SDK has no method for it"));
            continue;
        };
        for name in &row.accepted {
            if !described.top.contains(*name) {
                wrong.push(format!("{key}: {name} is not a parameter Stripe documents"));
            }
        }
        // Every sensitive name Stripe documents for the row is gated where it appears.
        for path in &described.nested {
            let parts: Vec<&str> = path
                .split(['[', ']'])
                .filter(|k| !k.is_empty())
                .take_while(|k| *k != "metadata")
                .collect();
            let exposed = parts
                .iter()
                .any(|k| sensitive(k) && !HARMLESS.iter().any(|(h, _)| h == k));
            let gated = parts.iter().any(|k| table.gated.contains(k))
                || parts.first().is_some_and(|r| row.gated.contains(r));
            if exposed && !gated {
                wrong.push(format!("{key}: {path} is not gated"));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "params/stripe.txt disagrees with stripe=={SDK_VERSION}:\n{}",
        wrong.join("\n")
    );
    Ok(())
}
