//! The kube-rs client (the one rdev-api uses) against the simulator: typed pods, waiting,
//! watching, logs and exec over WebSocket with the status channel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{pod_body, start};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn client(t: &common::TestSim) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&t.sim.kubeconfig_yaml("default")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

async fn read_all(reader: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut text = String::new();
    reader.unwrap().read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test]
async fn kube_rs_manages_pods_and_execs() {
    let t = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&t).await, "default");
    let pod: Pod = serde_json::from_value(pod_body("w1", json!({"app": "rdev"}))).unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let running =
        tokio::time::timeout(Duration::from_secs(5), await_condition(pods.clone(), "w1", conditions::is_pod_running()))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    let status = running.status.unwrap();
    assert!(status.container_statuses.unwrap()[0].ready);

    let listed = pods.list(&ListParams::default().labels("app=rdev")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let missing = pods.get("nope").await.unwrap_err();
    let kube::Error::Api(status) = missing else { panic!("expected an API error, got {missing:?}") };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let duplicate = pods.create(&PostParams::default(), &pod).await.unwrap_err();
    assert!(matches!(duplicate, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));

    let params = AttachParams::default().stdin(false).stdout(true).stderr(true);
    let mut process = pods.exec("w1", ["sh", "-c", "echo out; echo err >&2; exit 3"], &params).await.unwrap();
    let (stdout, stderr) = (process.stdout(), process.stderr());
    let status = process.take_status().unwrap();
    let (out, err) = tokio::join!(read_all(stdout), read_all(stderr));
    let status = status.await.unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let cause = &status.details.unwrap().causes.unwrap()[0];
    assert_eq!((cause.reason.as_deref(), cause.message.as_deref()), (Some("ExitCode"), Some("3")));
    process.join().await.unwrap();

    let params = AttachParams::default().stdin(true).stdout(true).stderr(false);
    let mut process = pods.exec("w1", ["cat"], &params).await.unwrap();
    let mut stdin = process.stdin().unwrap();
    let stdout = process.stdout();
    let status = process.take_status().unwrap();
    stdin.write_all(b"through stdin\n").await.unwrap();
    // Dropping the writer alone is not EOF (the simplex pipe stays open); shutdown is, and
    // kube-rs then sends the v5 CLOSE signal for stdin.
    stdin.shutdown().await.unwrap();
    drop(stdin);
    assert_eq!(read_all(stdout).await, "through stdin\n");
    assert_eq!(status.await.unwrap().status.as_deref(), Some("Success"));
    process.join().await.unwrap();

    let logs = pods.logs("w1", &LogParams::default()).await.unwrap();
    assert_eq!(logs, "kube-sim: container main started\n");

    pods.delete("w1", &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), await_condition(pods.clone(), "w1", conditions::is_deleted(&uid)))
        .await
        .unwrap()
        .unwrap();
    t.sim.shutdown().await;
}
