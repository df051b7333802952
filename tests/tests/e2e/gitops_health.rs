//! What GitOps tools make of our objects. Argo CD's health checks (`manifests/argocd/`, Argo's own
//! `resource_customizations` layout) run under the real Lua 5.1 interpreter, Argo CD's gopher-lua
//! being a Lua 5.1: first their `health_test.yaml` cases, as Argo CD's own test runner reads them,
//! then every phase of live objects from the stack, beside kstatus (Flux, `kubectl wait`, kpt)
//! computed by Flux's own library (sigs.k8s.io/cli-utils, through `scripts/kstatus`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use keybrake_crds::{KeyPhase, SpendPolicy, VaultKey};
use keybrake_e2e::{
    stack::{Stack, eventually},
    workspace_root,
};
use kube::{Api, api::DeleteParams};
use serde_json::Value;

const CUSTOMIZATIONS: &str = "manifests/argocd/resource_customizations/keybrake.com";

/// A JSON value as a Lua 5.1 table constructor (what Argo CD hands a health script as `obj`).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            // Three digits always, so a digit after it is not read as part of the escape.
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// Runs `kind`'s health.lua on `obj` with lua5.1; (status, message).
async fn health(kind: &str, obj: &Value) -> Result<(String, String)> {
    let script = std::fs::read_to_string(
        workspace_root()
            .join(CUSTOMIZATIONS)
            .join(kind)
            .join("health.lua"),
    )?;
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj)
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), program)?;
    let out = tokio::process::Command::new("lua5.1")
        .arg(file.path())
        .output()
        .await
        .context("running lua5.1 (install it with scripts/install-deps)")?;
    if !out.status.success() {
        bail!(
            "{kind}/health.lua failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((status.to_owned(), message.to_owned()))
}

/// kstatus as Flux computes it: `scripts/kstatus`, a small Go program on sigs.k8s.io/cli-utils'
/// `pkg/kstatus/status` that `scripts/install-deps` builds into `.tools/bin`.
async fn kstatus(obj: &Value) -> Result<(String, String)> {
    use tokio::io::AsyncWriteExt;
    let bin = keybrake_e2e::workspace_root().join(".tools/bin/kstatus");
    let mut child = tokio::process::Command::new(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{} (scripts/install-deps builds it)", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{obj}\n").as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "kstatus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, message) = text.trim_end().split_once('\t').unwrap_or((&text, ""));
    Ok((status.to_owned(), message.to_owned()))
}

#[tokio::test]
async fn argo_cd_health_tests_pass_under_lua_5_1() -> Result<()> {
    for kind in ["VaultKey", "SpendPolicy"] {
        let dir = workspace_root().join(CUSTOMIZATIONS).join(kind);
        let tests: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("health_test.yaml"))?)?;
        let cases = tests["tests"].as_array().context("tests")?;
        assert!(!cases.is_empty());
        for case in cases {
            let input = case["inputPath"].as_str().context("inputPath")?;
            let obj: Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(Path::new(&dir).join(input))?)?;
            let got = health(kind, &obj).await?;
            let want = (
                case["healthStatus"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                case["healthStatus"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            assert_eq!(got, want, "{kind} {input}");
        }
    }
    Ok(())
}

/// The Component merges both scripts, byte for byte, into an Argo CD install's argocd-cm.
#[tokio::test]
async fn the_argo_cd_component_merges_the_scripts_into_argocd_cm() -> Result<()> {
    // Kustomize takes components by relative path: the overlay sits two levels under the root.
    let target = workspace_root().join("target");
    std::fs::create_dir_all(&target)?;
    let dir = tempfile::tempdir_in(&target)?;
    std::fs::write(
        dir.path().join("argocd-cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\ndata:\n  url: https://argocd.example.com\n",
    )?;
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n  - argocd-cm.yaml\ncomponents:\n  - ../../manifests/argocd\n",
    )?;
    let out = tokio::process::Command::new(keybrake_e2e::kubectl_path()?)
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(dir.path())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout)?;
    let cm: Value = serde_yaml_ng::from_str(&rendered)?;
    assert_eq!(
        cm["data"]["url"], "https://argocd.example.com",
        "merged, not replaced"
    );
    for kind in ["VaultKey", "SpendPolicy"] {
        let script = std::fs::read_to_string(
            workspace_root()
                .join(CUSTOMIZATIONS)
                .join(kind)
                .join("health.lua"),
        )?;
        assert_eq!(
            cm["data"][format!("resource.customizations.health.keybrake.com_{kind}")],
            script.as_str(),
            "{kind}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_objects_read_right_in_argo_cd_and_kstatus_in_every_phase() -> Result<()> {
    let (stack, _proxy) = Stack::start_with_proxy().await?;
    let keys: Api<VaultKey> = Api::namespaced(stack.client.clone(), "billing");
    let policies: Api<SpendPolicy> = Api::namespaced(stack.client.clone(), "billing");
    // A key whose policy does not exist yet: only a change fixes it.
    stack
        .cluster
        .apply_ok(
            &keybrake_e2e::example("stripe-run-key.yaml").replace("name: stripe", "name: nowhere"),
        )
        .await?;
    let orphan = eventually("the orphan key to be reported", 20, || async {
        let vk = keys.get("billing-agent-run-7f3a").await.ok()?;
        vk.status.as_ref()?.phase.is_some().then_some(vk)
    })
    .await?;
    keys.delete("billing-agent-run-7f3a", &DeleteParams::default())
        .await?;
    eventually("the orphan to be gone", 20, || async {
        keys.get_opt("billing-agent-run-7f3a")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    // The policy without its Secret, then the real one and an Active key.
    let upstream = keybrake_e2e::upstream::RecordingUpstream::start().await?;
    let policy_yaml = keybrake_e2e::with_upstream(
        &keybrake_e2e::example("stripe-policy.yaml"),
        &upstream.url(),
    );
    let without_secret = policy_yaml.replace(
        "credentialsSecretRef:\n    name: stripe-credentials",
        "credentialsSecretRef:\n    name: not-there",
    );
    assert_ne!(without_secret, policy_yaml);
    stack.cluster.apply_ok(&without_secret).await?;
    let unusable = eventually("the policy to be reported", 20, || async {
        let p = policies.get("stripe").await.ok()?;
        p.status
            .as_ref()?
            .observed_generation
            .is_some()
            .then_some(p)
    })
    .await?;
    stack.apply_stripe_run_key(&upstream.url()).await?;
    let active = stack
        .key_in_phase("billing", "billing-agent-run-7f3a", KeyPhase::Active)
        .await?;
    let ready = eventually("the policy to be Ready", 20, || async {
        let p = policies.get("stripe").await.ok()?;
        p.status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(p)
    })
    .await?;
    // Caps above the policy's limits.
    stack
        .cluster
        .apply_ok(
            &keybrake_e2e::example("stripe-run-key.yaml")
                .replace("billing-agent-run-7f3a", "too-big")
                .replace("dailyUsdCap: 500", "dailyUsdCap: 900000"),
        )
        .await?;
    let invalid = stack
        .key_in_phase("billing", "too-big", KeyPhase::Invalid)
        .await?;
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    let revoked = stack
        .key_in_phase("billing", "billing-agent-run-7f3a", KeyPhase::Revoked)
        .await?;

    // Objects as the API server stores them on create, before the operator can have seen them
    // (a server-side dry run goes through the same defaulting and validation as a create).
    let mut just_created = Vec::new();
    for manifest in [
        keybrake_e2e::example("stripe-run-key.yaml").replace("billing-agent-run-7f3a", "new-key"),
        policy_yaml
            .split("---")
            .find(|doc| doc.contains("kind: SpendPolicy"))
            .context("a SpendPolicy in the example")?
            .replace("name: stripe\n", "name: new-policy\n"),
    ] {
        let out = stack
            .cluster
            .kubectl(
                &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&manifest),
            )
            .await?;
        just_created.push(serde_json::from_str::<Value>(&out.ok()?)?);
    }
    let [new_key, new_policy] =
        <[Value; 2]>::try_from(just_created).map_err(|_| anyhow::anyhow!("two objects"))?;
    assert_eq!(new_policy["metadata"]["name"], "new-policy");

    let table: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "a key just created",
            "VaultKey",
            new_key,
            "Progressing",
            "InProgress",
        ),
        (
            "a policy just created",
            "SpendPolicy",
            new_policy,
            "Progressing",
            "InProgress",
        ),
        (
            "a key whose policy is missing",
            "VaultKey",
            serde_json::to_value(&orphan)?,
            "Degraded",
            "Failed",
        ),
        (
            "a policy whose Secret is missing",
            "SpendPolicy",
            serde_json::to_value(&unusable)?,
            "Degraded",
            "Failed",
        ),
        (
            "a Ready policy",
            "SpendPolicy",
            serde_json::to_value(&ready)?,
            "Healthy",
            "Current",
        ),
        (
            "an Active key",
            "VaultKey",
            serde_json::to_value(&active)?,
            "Healthy",
            "Current",
        ),
        (
            "an Invalid key",
            "VaultKey",
            serde_json::to_value(&invalid)?,
            "Degraded",
            "Failed",
        ),
        // kstatus falls back to `Ready` when neither Reconciling nor Stalled is True, and reads
        // Ready=False as in progress: a stopped key holds a Flux health check (docs/gitops.md).
        (
            "a Revoked key",
            "VaultKey",
            serde_json::to_value(&revoked)?,
            "Suspended",
            "InProgress",
        ),
    ];
    for (what, kind, obj, argo, kstat) in table {
        let (status, message) = health(kind, &obj).await?;
        let (computed, why) = kstatus(&obj).await?;
        println!("{what:<36} Argo CD {status:<11} kstatus {computed:<10} {message}");
        assert_eq!(status, argo, "{what}: {message}");
        assert!(!message.is_empty(), "{what}: Argo CD shows why");
        assert_eq!(computed, kstat, "{what}: kstatus says {why:?} of {obj}");
    }
    // A spec change the operator has not seen yet reads as in progress in both.
    let mut stale = serde_json::to_value(&active)?;
    stale["metadata"]["generation"] = Value::from(active.metadata.generation.unwrap_or(1) + 1);
    assert_eq!(health("VaultKey", &stale).await?.0, "Progressing");
    assert_eq!(kstatus(&stale).await?.0, "InProgress");
    // `kubectl wait` on the conditions, as docs/gitops.md shows it.
    for (name, condition) in [
        ("billing-agent-run-7f3a", "Ready=False"),
        ("too-big", "Stalled=True"),
    ] {
        stack
            .cluster
            .kubectl_ok(&[
                "wait",
                "-n",
                "billing",
                &format!("vk/{name}"),
                &format!("--for=condition={condition}"),
                "--timeout=20s",
            ])
            .await?;
    }
    stack.assert_deployables_never_refused()?;
    Ok(())
}
