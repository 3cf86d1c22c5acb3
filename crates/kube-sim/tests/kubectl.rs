//! The real `kubectl` against a started simulator: discovery, tables, exec, logs, delete --wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::start;

async fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!(
            "kubectl is required for this test and could not be run ({e}); install kubectl 1.31+ and put it on PATH"
        ),
        Err(_) => panic!("kubectl {args:?} did not finish within 20 s"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn kubectl_gets_execs_logs_and_deletes() {
    let t = start().await;
    let kubeconfig = t.dir.path().join("kubeconfig");
    let home = t.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    t.sim.write_kubeconfig(&kubeconfig, "default").unwrap();
    t.running("w1").await;

    let get = kubectl(&kubeconfig, &home, &["get", "pods"]).await;
    let listed = text(&get.stdout);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert!(listed.starts_with("NAME") && listed.contains("READY") && listed.contains("STATUS"), "{listed}");
    let row = listed.lines().find(|l| l.starts_with("w1 ")).unwrap_or_else(|| panic!("no w1 row in {listed}"));
    assert!(row.contains("1/1") && row.contains("Running"), "{row}");

    let exec = kubectl(&kubeconfig, &home, &["exec", "w1", "--", "sh", "-c", "echo hi; exit 3"]).await;
    assert_eq!(exec.status.code(), Some(3), "stderr: {}", text(&exec.stderr));
    assert_eq!(text(&exec.stdout), "hi\n");
    assert!(text(&exec.stderr).contains("command terminated with exit code 3"), "{}", text(&exec.stderr));

    let missing = kubectl(&kubeconfig, &home, &["exec", "nope", "--", "true"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("pods \"nope\" not found"), "{}", text(&missing.stderr));

    let logs = kubectl(&kubeconfig, &home, &["logs", "w1"]).await;
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    assert_eq!(text(&logs.stdout), "kube-sim: container main started\n");

    let delete = kubectl(&kubeconfig, &home, &["delete", "pod", "w1"]).await;
    assert!(delete.status.success(), "{}", text(&delete.stderr));
    assert_eq!(text(&delete.stdout).trim(), "pod \"w1\" deleted");
    assert!(t.pod("w1").await.is_none(), "kubectl waited until the pod was gone");
    t.sim.shutdown().await;
}
