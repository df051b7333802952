//! Production packaging: the kustomization and the Helm chart rendered with the real kubectl and
//! helm, every object parsed into its k8s-openapi type, invariants checked (non-root, read-only,
//! limits, probes, pinned images, RBAC verbs on the documented list, CRDs identical to
//! `manifests/crds/`, the two renderings alike), then applied to the real API server (server-side dry run,
//! then for real). Also: the Dockerfile's runtime stages, and the metric names the dashboard and
//! the alert rules use exist.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{Namespace, PodSpec, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use keybrake_e2e::{Cluster, kubectl_path, workspace_root};
use serde_json::Value;

/// `helm template` of the chart as a release `keybrake` in `keybrake-system`; tests add values.
const CHART: [&str; 5] = [
    "template",
    "keybrake",
    "manifests/helm/keybrake",
    "--namespace",
    "keybrake-system",
];

async fn tool(program: &str, args: &[&str]) -> Result<String> {
    // helm from .tools/bin (scripts/install-deps), kubectl of the control plane's release.
    let path = match program {
        "kubectl" => kubectl_path()?,
        _ => workspace_root().join(".tools/bin").join(program),
    };
    let out = tokio::process::Command::new(&path)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .await
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn id(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        v["kind"].as_str().unwrap_or(""),
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// Every object, typed; fails on a kind we do not expect or a field its type does not have.
#[derive(Default)]
struct Rendered {
    all: Vec<Value>,
    pods: Vec<(String, PodSpec)>,
    rules: Vec<(String, PolicyRule)>,
    crds: Vec<CustomResourceDefinition>,
    deployments: BTreeMap<String, Deployment>,
    pdbs: Vec<PodDisruptionBudget>,
    netpols: BTreeMap<String, NetworkPolicy>,
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    // Round-trip through the type, then compare: a misspelt field would be dropped silently.
    let t: T = serde_json::from_value(v.clone()).with_context(|| id(v))?;
    Ok(t)
}

fn parse(yaml: &str) -> Result<Rendered> {
    let mut r = Rendered::default();
    for v in documents(yaml)? {
        let name = id(&v);
        match v["kind"].as_str().unwrap_or("") {
            "Namespace" => typed::<Namespace>(&v).map(|_| ())?,
            "ServiceAccount" => typed::<ServiceAccount>(&v).map(|_| ())?,
            "Service" => typed::<Service>(&v).map(|_| ())?,
            "ClusterRoleBinding" => typed::<ClusterRoleBinding>(&v).map(|_| ())?,
            "RoleBinding" => typed::<RoleBinding>(&v).map(|_| ())?,
            "ClusterRole" => {
                let role: ClusterRole = typed(&v)?;
                for rule in role.rules.unwrap_or_default() {
                    r.rules.push((name.clone(), rule));
                }
            }
            "Role" => {
                let role: Role = typed(&v)?;
                for rule in role.rules.unwrap_or_default() {
                    r.rules.push((name.clone(), rule));
                }
            }
            "Deployment" => {
                let d: Deployment = typed(&v)?;
                let pod = d
                    .spec
                    .clone()
                    .unwrap_or_default()
                    .template
                    .spec
                    .unwrap_or_default();
                r.pods.push((name.clone(), pod));
                r.deployments
                    .insert(v["metadata"]["name"].as_str().unwrap_or("").into(), d);
            }
            "StatefulSet" => {
                let s: StatefulSet = typed(&v)?;
                r.pods.push((
                    name.clone(),
                    s.spec.unwrap_or_default().template.spec.unwrap_or_default(),
                ));
            }
            "PodDisruptionBudget" => r.pdbs.push(typed(&v)?),
            "NetworkPolicy" => {
                r.netpols.insert(
                    v["metadata"]["name"].as_str().unwrap_or("").into(),
                    typed(&v)?,
                );
            }
            "CustomResourceDefinition" => r.crds.push(typed(&v)?),
            // cert-manager's kinds have no k8s-openapi type: checked by the TLS test below.
            "Certificate" | "Issuer" if v["apiVersion"] == "cert-manager.io/v1" => {}
            other => bail!("unexpected kind {other} ({name})"),
        }
        r.all.push(v);
    }
    Ok(r)
}

/// (component, apiGroup, resource, verb) rows of docs/rbac.md.
fn documented_verbs() -> Result<BTreeSet<(String, String, String, String)>> {
    let doc = std::fs::read_to_string(workspace_root().join("docs/rbac.md"))?;
    Ok(doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() >= 6 && !cells[1].starts_with('-') && cells[1] != "component").then(|| {
                let group = if cells[2] == "\"\"" { "" } else { cells[2] };
                (
                    cells[1].to_owned(),
                    group.to_owned(),
                    cells[3].to_owned(),
                    cells[4].to_owned(),
                )
            })
        })
        .collect())
}

fn component(role: &str) -> &str {
    if role.contains("vaultkey-issuer") {
        "workloads"
    } else if role.contains("keybrake-operator") {
        "operator"
    } else {
        "proxy"
    }
}

fn check_invariants(what: &str, r: &Rendered) -> Result<()> {
    // Containers: non-root, no escalation, read-only, limits and requests, both probes, pinned.
    for (owner, pod) in &r.pods {
        let pod_nonroot = pod
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            == Some(true);
        for c in &pod.containers {
            let at = format!("{what}: {owner} container {}", c.name);
            let sc = c.security_context.clone().unwrap_or_default();
            assert!(
                pod_nonroot || sc.run_as_non_root == Some(true),
                "{at}: not runAsNonRoot"
            );
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{at}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}");
            let caps = sc.capabilities.unwrap_or_default().drop.unwrap_or_default();
            assert!(
                caps.contains(&"ALL".to_owned()),
                "{at}: capabilities not dropped"
            );
            let res = c.resources.clone().unwrap_or_default();
            for (kind, m) in [("limits", res.limits), ("requests", res.requests)] {
                let m = m.unwrap_or_default();
                assert!(
                    m.contains_key("cpu") && m.contains_key("memory"),
                    "{at}: no cpu/memory {kind}"
                );
            }
            assert!(
                c.readiness_probe.is_some() && c.liveness_probe.is_some(),
                "{at}: probes"
            );
            let image = c.image.clone().unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                image.contains("@sha256:")
                    || (!tag.is_empty() && tag != "latest" && !tag.contains('/')),
                "{at}: image {image:?} is not pinned"
            );
        }
    }
    // RBAC: every verb on the documented list; nothing wildcard or privilege-granting.
    let documented = documented_verbs()?;
    assert!(documented.len() > 30, "docs/rbac.md table not found");
    let mut granted = BTreeSet::new();
    for (role, rule) in &r.rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        for group in &groups {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        !["*", "escalate", "bind", "impersonate"].contains(&verb.as_str())
                            && resource != "*",
                        "{what}: {role} holds {verb} on {resource}"
                    );
                    let row = (
                        component(role).to_owned(),
                        group.clone(),
                        resource.clone(),
                        verb.clone(),
                    );
                    assert!(
                        documented.contains(&row),
                        "{what}: {role} verb {row:?} is not in docs/rbac.md"
                    );
                    granted.insert(row);
                }
            }
        }
    }
    // And the table claims nothing the manifests do not grant.
    let claimed: Vec<_> = documented.difference(&granted).collect();
    assert!(
        claimed.is_empty(),
        "{what}: docs/rbac.md lists verbs no Role grants: {claimed:?}"
    );
    // The CRDs are the generated ones, byte for byte in meaning.
    let mut from_files = Vec::new();
    for name in [
        "spendpolicies.keybrake.com.yaml",
        "vaultkeys.keybrake.com.yaml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join("manifests/crds").join(name))?;
        from_files.push(serde_json::to_value(serde_yaml_ng::from_str::<
            CustomResourceDefinition,
        >(&text)?)?);
    }
    let mut rendered: Vec<Value> = r
        .crds
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    for crd in &mut rendered {
        if let Some(labels) = crd
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.retain(|k, _| !k.starts_with("app.kubernetes.io/") && k != "helm.sh/chart");
            if labels.is_empty() {
                crd["metadata"].as_object_mut().map(|m| m.remove("labels"));
            }
        }
    }
    rendered.sort_by_key(|c| c["metadata"]["name"].to_string());
    assert_eq!(
        rendered, from_files,
        "{what}: CRDs differ from manifests/crds/"
    );
    // Replicas, leader election, the PDB, and Redis reachable only from the proxy and the operator.
    let operator = &r.deployments["keybrake-operator"];
    assert_eq!(operator.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let env: Vec<_> = operator
        .spec
        .clone()
        .unwrap_or_default()
        .template
        .spec
        .unwrap_or_default()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "KEYBRAKE_LEADER_ELECTION" && e.value.as_deref() == Some("true"))
    );
    assert_eq!(
        r.deployments["keybrake-proxy"]
            .spec
            .as_ref()
            .and_then(|s| s.replicas),
        Some(3)
    );
    assert_eq!(r.pdbs.len(), 1);
    let redis = serde_json::to_value(&r.netpols["redis"])?;
    let from: Vec<String> = redis["spec"]["ingress"][0]["from"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["podSelector"]["matchLabels"]["app.kubernetes.io/name"].to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        from,
        vec!["\"keybrake-proxy\"", "\"keybrake-operator\""],
        "{what}: who reaches Redis"
    );
    assert!(r.netpols.contains_key("default-deny"));
    Ok(())
}

#[tokio::test]
async fn the_kustomization_and_the_chart_render_what_production_needs_and_apply() -> Result<()> {
    let kustomized = tool("kubectl", &["kustomize", "manifests/"]).await?;
    let charted = tool("helm", &[&CHART[..], &["--include-crds"]].concat()).await?;
    let k = parse(&kustomized)?;
    let h = parse(&charted)?;
    println!(
        "kustomize: {} objects, helm: {} objects",
        k.all.len(),
        h.all.len()
    );
    check_invariants("kustomize", &k)?;
    check_invariants("helm", &h)?;

    // The same objects (Helm leaves the namespace to `--create-namespace`), the same rules.
    let ids = |r: &Rendered| -> BTreeSet<String> {
        r.all
            .iter()
            .map(id)
            .filter(|i| !i.starts_with("Namespace/"))
            .collect()
    };
    assert_eq!(
        ids(&k),
        ids(&h),
        "kustomize and helm render different objects"
    );
    let rules = |r: &Rendered| -> BTreeSet<String> {
        r.rules
            .iter()
            .map(|(role, rule)| {
                format!("{role} {}", serde_json::to_string(rule).unwrap_or_default())
            })
            .collect()
    };
    assert_eq!(
        rules(&k),
        rules(&h),
        "kustomize and helm grant different RBAC"
    );
    let images = |r: &Rendered| -> BTreeSet<String> {
        r.pods
            .iter()
            .flat_map(|(_, p)| p.containers.iter().filter_map(|c| c.image.clone()))
            .collect()
    };
    assert_eq!(images(&k), images(&h));

    // Applied to the API server: a server-side dry run first (after the namespace and CRDs, which the
    // rest depends on, as on a real server), then for real, twice (idempotent).
    let cluster = Cluster::start().await?;
    let first: String = k
        .all
        .iter()
        .filter(|v| {
            matches!(
                v["kind"].as_str(),
                Some("Namespace" | "CustomResourceDefinition")
            )
        })
        .map(|v| format!("---\n{}", serde_yaml_ng::to_string(v).unwrap_or_default()))
        .collect();
    let out = cluster
        .kubectl(&["apply", "--server-side", "-f", "-"], Some(&first))
        .await?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let dry = cluster
        .kubectl(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&kustomized),
        )
        .await?;
    assert_eq!(dry.code, 0, "dry run: {}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .contains("deployment.apps/keybrake-proxy serverside-applied (server dry run)"),
        "{}",
        dry.stdout
    );
    let listed = cluster
        .kubectl_ok(&["get", "deploy", "-n", "keybrake-system", "-o", "name"])
        .await?;
    assert!(
        listed.trim().is_empty(),
        "a dry run stored objects: {listed}"
    );
    for round in 0..2 {
        let out = cluster
            .kubectl(&["apply", "-f", "-"], Some(&kustomized))
            .await?;
        assert_eq!(
            out.code, 0,
            "apply round {round}: {}{}",
            out.stdout, out.stderr
        );
    }
    let helm_dry = cluster
        .kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-f",
                "-",
            ],
            Some(&charted),
        )
        .await?;
    assert_eq!(
        helm_dry.code, 0,
        "helm dry run: {}{}",
        helm_dry.stdout, helm_dry.stderr
    );
    // A managed Redis: no StatefulSet, its URL everywhere; without a URL the chart refuses.
    let external = tool(
        "helm",
        &[
            &CHART[..],
            &[
                "--set",
                "redis.enabled=false",
                "--set",
                "redis.url=rediss://redis.example:6380/",
            ],
        ]
        .concat(),
    )
    .await?;
    let external = parse(&external)?;
    assert!(!external.all.iter().any(|v| v["kind"] == "StatefulSet"));
    for (_, pod) in &external.pods {
        let env = pod.containers[0].env.clone().unwrap_or_default();
        let url = env
            .iter()
            .find(|e| e.name == "REDIS_URL")
            .and_then(|e| e.value.clone());
        assert_eq!(url.as_deref(), Some("rediss://redis.example:6380/"));
    }
    // TLS: by default from the Secret keybrake-proxy-tls (probes over HTTPS, an https URL in
    // key Secrets, its CA copied); with cert-manager, a Certificate for the Service's names;
    // plain HTTP only when asked for by name.
    let env_of = |r: &Rendered, who: &str| -> BTreeMap<String, String> {
        r.pods
            .iter()
            .find(|(n, _)| n.contains(who))
            .and_then(|(_, p)| p.containers[0].env.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect()
    };
    let default = parse(&tool("helm", &CHART).await?)?;
    assert_eq!(
        env_of(&default, "keybrake-proxy")
            .get("KEYBRAKE_TLS_SECRET")
            .map(String::as_str),
        Some("keybrake-system/keybrake-proxy-tls")
    );
    let operator_env = env_of(&default, "keybrake-operator");
    assert_eq!(
        operator_env.get("KEYBRAKE_PROXY_URL").map(String::as_str),
        Some("https://keybrake-proxy.keybrake-system.svc:8080")
    );
    assert_eq!(
        operator_env
            .get("KEYBRAKE_PROXY_CA_SECRET")
            .map(String::as_str),
        Some("keybrake-system/keybrake-proxy-tls")
    );
    let with_cert_manager = tool(
        "helm",
        &[&CHART[..], &["--set", "proxy.tls.mode=certManager"]].concat(),
    )
    .await?;
    let issued = parse(&with_cert_manager)?;
    let certificate = issued
        .all
        .iter()
        .find(|v| v["kind"] == "Certificate" && v["metadata"]["name"] == "keybrake-proxy")
        .ok_or_else(|| anyhow::anyhow!("no Certificate for the proxy"))?;
    assert_eq!(certificate["spec"]["secretName"], "keybrake-proxy-tls");
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == "keybrake-proxy.keybrake-system.svc")),
        "{certificate}"
    );
    let plaintext = parse(
        &tool(
            "helm",
            &[&CHART[..], &["--set", "proxy.tls.mode=plaintext"]].concat(),
        )
        .await?,
    )?;
    assert_eq!(
        env_of(&plaintext, "keybrake-proxy")
            .get("KEYBRAKE_PLAINTEXT")
            .map(String::as_str),
        Some("true")
    );
    assert!(!env_of(&plaintext, "keybrake-operator").contains_key("KEYBRAKE_PROXY_CA_SECRET"));
    // A public URL is https:// while TLS is on, and its host is in the certificate.
    let public = parse(
        &tool(
            "helm",
            &[
                &CHART[..],
                &[
                    "--set",
                    "proxy.tls.mode=certManager",
                    "--set",
                    "proxy.publicUrl=https://keybrake.example.com:8443",
                ],
            ]
            .concat(),
        )
        .await?,
    )?;
    let names = public
        .all
        .iter()
        .find(|v| v["kind"] == "Certificate" && v["metadata"]["name"] == "keybrake-proxy")
        .map(|c| c["spec"]["dnsNames"].clone())
        .unwrap_or_default();
    assert!(
        names
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == "keybrake.example.com")),
        "{names}"
    );
    let clear = tool(
        "helm",
        &[
            &CHART[..],
            &["--set", "proxy.publicUrl=http://keybrake.example.com:8080"],
        ]
        .concat(),
    )
    .await;
    let err = clear.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("proxy.publicUrl must be https://"), "{err}");
    // The kustomize component renders the same Certificate.
    let component = std::fs::read_to_string(
        workspace_root().join("manifests/components/proxy-cert-manager/certificates.yaml"),
    )?;
    assert!(component.contains("secretName: keybrake-proxy-tls"));
    // Digests: each image its own; one digest for both is refused.
    let (op, px) = (
        "sha256:".to_owned() + &"a".repeat(64),
        "sha256:".to_owned() + &"b".repeat(64),
    );
    let pinned = tool(
        "helm",
        &[
            &CHART[..],
            &[
                "--set",
                &format!("operator.image.digest={op}"),
                "--set",
                &format!("proxy.image.digest={px}"),
            ],
        ]
        .concat(),
    )
    .await?;
    let images: BTreeSet<String> = parse(&pinned)?
        .pods
        .iter()
        .filter_map(|(_, pod)| pod.containers[0].image.clone())
        .collect();
    assert!(
        images.contains(&format!("ghcr.io/keybrake/keybrake-operator@{op}"))
            && images.contains(&format!("ghcr.io/keybrake/keybrake-proxy@{px}")),
        "{images:?}"
    );
    let one = tool(
        "helm",
        &[&CHART[..], &["--set", &format!("image.digest={op}")]].concat(),
    )
    .await;
    let err = one.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("set operator.image.digest and proxy.image.digest"),
        "{err}"
    );
    let missing = tool(
        "helm",
        &[&CHART[..], &["--set", "redis.enabled=false"]].concat(),
    )
    .await;
    let err = missing.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("redis.url is required"), "{err}");
    // Redis Cluster: the seed nodes and the mode reach both deployables; the bundled single
    // node cannot be a cluster.
    let clustered = tool(
        "helm",
        &[
            &CHART[..],
            &[
                "--set",
                "redis.enabled=false",
                "--set",
                "redis.mode=cluster",
                "--set",
                "redis.url=redis://a:6379\\,redis://b:6379",
                "--set",
                "redis.replicaAcks=1",
            ],
        ]
        .concat(),
    )
    .await?;
    for (name, pod) in &parse(&clustered)?.pods {
        let env: BTreeMap<String, String> = pod.containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        assert_eq!(
            env.get("KEYBRAKE_REDIS_MODE").map(String::as_str),
            Some("cluster"),
            "{name}"
        );
        assert_eq!(
            env.get("REDIS_URL").map(String::as_str),
            Some("redis://a:6379,redis://b:6379"),
            "{name}"
        );
        if name.contains("proxy") {
            assert_eq!(
                env.get("KEYBRAKE_REDIS_REPLICA_ACKS").map(String::as_str),
                Some("1")
            );
        }
    }
    let bundled = tool(
        "helm",
        &[&CHART[..], &["--set", "redis.mode=cluster"]].concat(),
    )
    .await;
    let err = bundled.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("redis.mode=cluster needs redis.enabled=false"),
        "{err}"
    );
    let listed = cluster
        .kubectl_ok(&[
            "get",
            "deploy,sts,svc,pdb,netpol",
            "-n",
            "keybrake-system",
            "-o",
            "name",
        ])
        .await?;
    println!("{listed}");
    assert_eq!(listed.lines().count(), 2 + 1 + 3 + 1 + 5, "{listed}");
    Ok(())
}

/// The egress rules of the proxy's and the operator's NetworkPolicies, by policy.
fn egress(r: &Rendered) -> Result<BTreeMap<String, Value>> {
    ["proxy", "operator"]
        .into_iter()
        .map(|name| {
            let policy = r.netpols.get(name).context(name)?;
            Ok((
                name.to_owned(),
                serde_json::to_value(&policy.spec.as_ref().context(name)?.egress)?,
            ))
        })
        .collect()
}

/// What the deployables get to reach Redis: the Redis variables and the volumes, by deployment.
fn redis_settings(r: &Rendered) -> Result<BTreeMap<String, Value>> {
    r.deployments
        .iter()
        .map(|(name, d)| {
            let pod = d
                .spec
                .clone()
                .unwrap_or_default()
                .template
                .spec
                .unwrap_or_default();
            let c = &pod.containers[0];
            let env: BTreeMap<String, String> = c
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.name == "REDIS_URL" || e.name.starts_with("KEYBRAKE_REDIS_"))
                .filter_map(|e| Some((e.name, e.value?)))
                .collect();
            let mut mounts = c.volume_mounts.clone().unwrap_or_default();
            mounts.sort_by(|a, b| a.name.cmp(&b.name));
            let mut volumes = pod.volumes.unwrap_or_default();
            volumes.sort_by(|a, b| a.name.cmp(&b.name));
            Ok((
                name.clone(),
                serde_json::json!({"env": env, "mounts": mounts, "volumes": volumes}),
            ))
        })
        .collect()
}

/// `manifests/` with these of its components, rendered by an overlay as the kustomize docs show
/// (kustomize takes only relative paths: up from the temporary folder to the root, then down to
/// the workspace).
async fn with_components(components: &[&str]) -> Result<Rendered> {
    let overlay = tempfile::tempdir()?;
    let up = "../".repeat(overlay.path().components().count() - 1);
    let root = format!(
        "{up}{}",
        workspace_root()
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    let listed: String = components
        .iter()
        .map(|c| format!("- {root}/manifests/components/{c}\n"))
        .collect();
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{root}/manifests]\ncomponents:\n{listed}"
        ),
    )?;
    let path = overlay.path().display().to_string();
    parse(&tool("kubectl", &["kustomize", &path]).await?)
}

/// A managed Redis over TLS, from the chart's values and from the kustomize components: no
/// bundled Redis, egress to its addresses instead of the bundled pods, the CA and the client
/// certificate mounted from Secrets; the two renderings alike.
#[tokio::test]
async fn an_external_tls_redis_gets_egress_rules_and_tls_files_in_both_renderings() -> Result<()> {
    let external = [
        "--set",
        "redis.enabled=false",
        "--set",
        "redis.url=rediss://redis.example.com:6380/",
    ];
    let values = [
        "--set",
        "redis.external.cidrs={203.0.113.10/32}",
        "--set",
        "redis.external.ports={6380}",
        "--set",
        "redis.tls.caSecret=keybrake-redis-ca",
        "--set",
        "redis.tls.clientSecret=keybrake-redis-client",
    ];
    let helm = parse(&tool("helm", &[&CHART[..], &external[..], &values[..]].concat()).await?)?;
    let kustomized = with_components(&["external-redis", "redis-ca", "redis-client-cert"]).await?;

    let expected = serde_json::json!({
        "to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
        "ports": [{"protocol": "TCP", "port": 6380}],
    });
    for (what, r) in [("helm", &helm), ("kustomize", &kustomized)] {
        assert!(
            !r.all.iter().any(|v| v["kind"] == "StatefulSet"),
            "{what}: the bundled Redis is still there"
        );
        assert!(!r.netpols.contains_key("redis"), "{what}");
        for (name, rules) in egress(r)? {
            assert_eq!(rules[0], expected, "{what}: {name} egress");
            assert!(
                !rules.to_string().contains("keybrake-redis"),
                "{what}: {name} still allows the bundled Redis: {rules}"
            );
        }
        for (name, settings) in redis_settings(r)? {
            let env = &settings["env"];
            assert_eq!(
                env["REDIS_URL"], "rediss://redis.example.com:6380/",
                "{what}: {name}"
            );
            assert_eq!(
                env["KEYBRAKE_REDIS_CA_FILE"],
                "/etc/keybrake/redis-ca/ca.crt"
            );
            assert_eq!(
                env["KEYBRAKE_REDIS_CLIENT_KEY_FILE"],
                "/etc/keybrake/redis-client/tls.key"
            );
            let secrets: Vec<&str> = settings["volumes"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|v| v["secret"]["secretName"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                secrets,
                ["keybrake-redis-ca", "keybrake-redis-client"],
                "{what}: {name}"
            );
            let mounts = settings["mounts"].as_array().cloned().unwrap_or_default();
            assert_eq!(mounts.len(), 2, "{what}: {name}");
            assert!(
                mounts.iter().all(|m| m["readOnly"] == true),
                "{what}: {name}: {mounts:?}"
            );
        }
    }
    assert_eq!(egress(&helm)?, egress(&kustomized)?);
    assert_eq!(redis_settings(&helm)?, redis_settings(&kustomized)?);
    let ids = |r: &Rendered| -> BTreeSet<String> {
        r.all
            .iter()
            .map(id)
            .filter(|i| !i.starts_with("Namespace/") && !i.starts_with("CustomResourceDefinition/"))
            .collect()
    };
    assert_eq!(ids(&helm), ids(&kustomized));

    // Without addresses the chart renders no Redis egress at all (and its notes warn).
    let bare = parse(&tool("helm", &[&CHART[..], &external[..]].concat()).await?)?;
    for (name, rules) in egress(&bare)? {
        assert_eq!(rules.as_array().map(Vec::len), Some(1), "{name}: {rules}");
        assert!(!rules.to_string().contains("keybrake-redis"), "{name}");
    }
    Ok(())
}

/// The audit database in both renderings: the proxy takes its URL from a Secret that may not
/// exist (no database: the audit trail stays in Redis), names its consumer after its pod, and may
/// reach the database's addresses once they are given.
#[tokio::test]
async fn the_audit_database_comes_from_an_optional_secret_in_both_renderings() -> Result<()> {
    let helm = parse(
        &tool(
            "helm",
            &[
                &CHART[..],
                &["--set", "auditDatabase.cidrs={198.51.100.7/32}"],
            ]
            .concat(),
        )
        .await?,
    )?;
    let kustomized = with_components(&["audit-db"]).await?;
    for (what, r) in [("helm", &helm), ("kustomize", &kustomized)] {
        let proxy = r
            .all
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "keybrake-proxy")
            .context("the proxy Deployment")?;
        let env = &proxy["spec"]["template"]["spec"]["containers"][0]["env"];
        let var = |name: &str| {
            env.as_array()
                .and_then(|e| e.iter().find(|v| v["name"] == name))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            var("KEYBRAKE_AUDIT_DB_URL")["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "keybrake-audit-db", "key": "url", "optional": true}),
            "{what}"
        );
        assert_eq!(
            var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name",
            "{what}"
        );
        assert_eq!(
            var("KEYBRAKE_AUDIT_RETENTION_DAYS")["value"],
            "365",
            "{what}"
        );
        let to_db = r
            .all
            .iter()
            .filter(|o| o["kind"] == "NetworkPolicy")
            .filter(|o| {
                o["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    == "keybrake-proxy"
            })
            .flat_map(|o| o["spec"]["egress"].as_array().cloned().unwrap_or_default())
            .find(|rule| rule["ports"][0]["port"] == 5432);
        assert!(to_db.is_some(), "{what}: no egress to the database");
    }
    Ok(())
}

#[test]
fn the_dockerfile_builds_non_root_distroless_images_from_pinned_bases() -> Result<()> {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile"))?;
    let mut stages: Vec<(String, String)> = Vec::new();
    let mut users: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let image = parts[0].to_owned();
            assert!(
                !image.ends_with(":latest") && image.contains(':'),
                "unpinned base {image}"
            );
            stages.push((parts.last().unwrap_or(&"").to_string(), image));
        } else if let Some(user) = line.strip_prefix("USER ") {
            let stage = stages.last().map(|s| s.0.clone()).unwrap_or_default();
            users.insert(stage, user.to_owned());
        }
    }
    for target in ["operator", "proxy"] {
        let (_, base) = stages
            .iter()
            .find(|(s, _)| s == target)
            .context("stage missing")?;
        assert!(
            base.starts_with("gcr.io/distroless/"),
            "{target} runs on {base}"
        );
        assert_eq!(
            users.get(target).map(String::as_str),
            Some("65532:65532"),
            "{target} user"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_and_the_alerts_use_metrics_that_exist() -> Result<()> {
    // Families appear once they have a sample: give each one.
    let proxy = keybrake_proxy::metrics::Metrics::default();
    let stripe = keybrake_crds::Vendor::Stripe;
    proxy.forwarded(
        stripe,
        "POST /v1/x".into(),
        keybrake_ledger::Outcome::Ok,
        keybrake_crds::Usd::ZERO,
    );
    proxy.refused(stripe, "redis");
    proxy.upstream_latency(stripe, std::time::Duration::from_millis(1));
    proxy.redis_latency("reserve", std::time::Duration::from_millis(1));
    proxy.redis_error();
    let spend = keybrake_ledger::Spend::default();
    proxy.key_spend("ns/key", "ns/policy", &spend, Some(1), Some(1));
    proxy
        .audit
        .lag_seconds
        .get_or_create(&keybrake_audit::metrics::StreamLabel { stream: "t".into() })
        .set(1.0);
    proxy
        .audit
        .failures
        .get_or_create(&keybrake_audit::metrics::StepLabel {
            step: "write".into(),
        })
        .inc();
    let operator = keybrake_operator::metrics::Metrics::default();
    operator.reconciled("vaultkey");
    operator.failed("vaultkey", "redis");
    operator.key_phase("uid", Some(keybrake_crds::KeyPhase::Active));
    operator.unreadable("vaultkey", "uid", true);
    let exported = proxy.encode() + &operator.encode();
    let families: BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let name = regex::Regex::new(r"keybrake_(proxy|operator)_[a-z_]+")?;
    let root = workspace_root().join("manifests/observability");
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json"))?;
    let _: Value = serde_json::from_str(&dashboard)?;
    let rules = std::fs::read_to_string(root.join("prometheus-rules.yaml"))?;
    let parsed: Value = serde_yaml_ng::from_str(&rules)?;
    let alerts: Vec<&str> = parsed["groups"][0]["rules"]
        .as_array()
        .map(|r| r.iter().filter_map(|a| a["alert"].as_str()).collect())
        .unwrap_or_default();
    for wanted in [
        "KeybrakeKeyCapAt80Percent",
        "KeybrakeProxyFailingClosed",
        "KeybrakeRedisErrors",
        "KeybrakeReconcileFailures",
        "KeybrakeAuditExportLagging",
    ] {
        assert!(alerts.contains(&wanted), "{wanted} missing: {alerts:?}");
    }
    let mut used = BTreeSet::new();
    for m in name.find_iter(&dashboard).chain(name.find_iter(&rules)) {
        let full = m.as_str();
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| full.strip_suffix(s))
            .unwrap_or(full);
        assert!(
            families.contains(family),
            "{full} is not exported (families: {families:?})"
        );
        used.insert(family.to_owned());
    }
    println!(
        "dashboard and alerts use {} metric families: {used:?}",
        used.len()
    );
    assert!(used.contains("keybrake_proxy_key_cap_used_ratio"));
    Ok(())
}
