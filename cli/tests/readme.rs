//! The README's first command and walkthrough, run verbatim: `keybrake dev` (the real binary),
//! on the real control plane, then the walkthrough block with kubectl of the server's release and
//! the official Python stripe SDK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::AsyncBufReadExt;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn walkthrough() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("```sh walkthrough\n")
        .expect("the README has a walkthrough block")
        + "```sh walkthrough\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

/// localstripe (`tests/sdk/localstripe_server.py`) on a free port, killed on drop.
async fn localstripe() -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new("python3")
        .arg(root().join("tests/sdk/localstripe_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("localstripe (scripts/install-deps installs it)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("ready") {
                return;
            }
        }
        panic!("localstripe exited before it was ready")
    })
    .await
    .expect("localstripe did not start in 30s");
    (child, port)
}

/// Waits for `keybrake dev: ready` on the child's stdout; the line, and the rest of stdout
/// (kept open: the child prints again when it stops).
async fn wait_ready(
    dev: &mut tokio::process::Child,
) -> (
    String,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("keybrake dev: ready") {
                return line;
            }
        }
        panic!("keybrake dev exited before it was ready")
    })
    .await
    .expect("keybrake dev was not ready in 60s");
    (ready, lines)
}

/// Ctrl-C stops everything and exits 0.
async fn stops_on_ctrl_c(mut dev: tokio::process::Child) {
    let pid = dev.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .expect("keybrake dev did not stop")
        .unwrap();
    assert!(status.success(), "keybrake dev exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_verbatim() {
    let state = tempfile::tempdir().unwrap();
    let keybrake = PathBuf::from(env!("CARGO_BIN_EXE_keybrake"));
    let tools = root().join(".tools/bin");
    let path = format!(
        "{}:{}:{}",
        keybrake.parent().unwrap().display(),
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Stripe calls go to localstripe, as the README says (the other vendors to the sandboxes).
    let localstripe = localstripe().await;
    let mut dev = tokio::process::Command::new(&keybrake)
        .args(["dev", "--state-dir"])
        .arg(state.path())
        .arg("--upstream")
        .arg(format!("stripe=http://127.0.0.1:{}", localstripe.1))
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (ready, _stdout) = wait_ready(&mut dev).await;
    println!("{ready}");

    // Verbatim but for where the state lives, and a private kubectl cache.
    let script = walkthrough().replace(
        ". .keybrake/env",
        &format!(". {}/env", state.path().display()),
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\nexport KUBECACHEDIR={}/cache\n{script}",
            state.path().display()
        ))
        .current_dir(root())
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the walkthrough failed");
    assert!(
        stdout.contains("charged cus_1: pi_") && stdout.contains("charged cus_2: pi_"),
        "{stdout}"
    );
    assert!(stdout.contains("refused cus_3: cap_exhausted"), "{stdout}");
    assert!(
        stdout.contains("400.00"),
        "spend in kubectl get vk: {stdout}"
    );
    assert!(
        stdout.contains("run hatchet/billing-agent/7f3a9c2e: 2 calls, 1 refused, 400.00 spent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("issued hatchet-billing-agent-demo-1-")
            && stdout.contains("charged $30.00: pi_")
            && stdout.contains("refused: cap_exhausted")
            && stdout.contains("state revoked, spent $30.00"),
        "the issuance API example: {stdout}"
    );
    assert!(
        stdout.contains("refused cus_1: vault_key_revoked"),
        "{stdout}"
    );

    // The server is the real kube-apiserver, and kubectl's built-in kinds (sent as protobuf)
    // work against it.
    let kubectl = |args: &'static [&'static str]| {
        let (path, kubeconfig) = (path.clone(), state.path().join("kubeconfig"));
        async move {
            let out = tokio::process::Command::new("kubectl")
                .args(args)
                .env("PATH", path)
                .env("KUBECONFIG", kubeconfig)
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "kubectl {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            text
        }
    };
    let version = kubectl(&["version"]).await;
    assert!(
        version.contains(&format!(
            "Server Version: {}",
            keybrake_control_plane::RELEASE
        )),
        "{version}"
    );
    kubectl(&["create", "namespace", "demo"]).await;
    kubectl(&[
        "create",
        "secret",
        "generic",
        "x",
        "--from-literal=a=b",
        "-n",
        "demo",
    ])
    .await;

    // The same binary is a kubectl plugin when it is on the PATH as kubectl-keybrake.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&keybrake, plugins.path().join("kubectl-keybrake")).unwrap();
    let plugin = tokio::process::Command::new("kubectl")
        .args(["keybrake", "spend", "-n", "billing"])
        .env("PATH", format!("{}:{path}", plugins.path().display()))
        .env("KUBECONFIG", state.path().join("kubeconfig"))
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&plugin.stdout);
    assert!(
        plugin.status.success()
            && listed.contains("billing-agent-run-7f3a")
            && listed.contains("Revoked"),
        "{listed}{}",
        String::from_utf8_lossy(&plugin.stderr)
    );

    // Ctrl-C stops everything and exits 0.
    stops_on_ctrl_c(dev).await;
}

#[tokio::test]
async fn without_redis_server_keybrake_dev_says_how_to_install_it() {
    let keybrake = PathBuf::from(env!("CARGO_BIN_EXE_keybrake"));
    let state = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&keybrake)
        .args(["dev", "--state-dir"])
        .arg(state.path())
        .env("PATH", "/nonexistent")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("redis-server not found")
            && stderr.contains("apt-get install redis-server"),
        "{stderr}"
    );
}

/// `keybrake dev --kubeconfig`: an existing cluster (here a control plane started apart, as a kind
/// or k3d cluster would be) gets the CRDs and the dev account, and the operator and the proxy run
/// here against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keybrake_dev_runs_against_an_existing_cluster() {
    let plane = keybrake_control_plane::ControlPlane::start(Default::default())
        .await
        .unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let kubeconfig = theirs.path().join("kubeconfig");
    std::fs::write(&kubeconfig, plane.kubeconfig().unwrap()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let keybrake = PathBuf::from(env!("CARGO_BIN_EXE_keybrake"));
    let path = format!(
        "{}:{}",
        root().join(".tools/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut dev = tokio::process::Command::new(&keybrake)
        .args(["dev", "--state-dir"])
        .arg(state.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (ready, _stdout) = wait_ready(&mut dev).await;
    assert!(
        ready.contains(&format!("api from {}", kubeconfig.display())),
        "{ready}"
    );
    let env = std::fs::read_to_string(state.path().join("env")).unwrap();
    assert!(
        env.contains(&format!("KUBECONFIG={}", kubeconfig.display())),
        "the env file points at the user's cluster: {env}"
    );
    let script = format!(
        "set -euo pipefail\nexport KUBECONFIG={}\nkubectl apply -f manifests/examples/stripe-policy.yaml -f manifests/examples/stripe-run-key.yaml\nkubectl wait vk/billing-agent-run-7f3a -n billing --for=jsonpath='{{.status.phase}}'=Active --timeout=60s\nkubectl get secret billing-agent-run-7f3a -n billing -o name",
        kubeconfig.display()
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(root())
        .env("PATH", &path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("secret/billing-agent-run-7f3a"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stops_on_ctrl_c(dev).await;
    // The user's cluster is still there, with the key.
    let client = plane.client().await.unwrap();
    kube::Api::<keybrake_crds::VaultKey>::namespaced(client, "billing")
        .get("billing-agent-run-7f3a")
        .await
        .unwrap();
}
