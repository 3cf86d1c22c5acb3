//! The audit log cannot be dodged, flooded or quietly rewritten, and its reads follow project
//! visibility; client addresses behind trusted proxies cannot be forged (issue 11).

#![allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]

mod common;

use common::{problem, spawn_app, spawn_app_with};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Audit records of one request id, with the admin key.
async fn records_of(app: &common::TestApp, request_id: &str) -> Vec<Value> {
    let v: Value = app.get("/v1/audit-log?limit=200").await.json().await.expect("json");
    let mut out = Vec::new();
    let mut page = v;
    loop {
        out.extend(page["items"].as_array().expect("items").iter().filter(|r| r["request_id"] == request_id).cloned());
        let Some(cursor) = page["next_cursor"].as_str().map(str::to_owned) else { break };
        page = app.get(&format!("/v1/audit-log?limit=200&cursor={cursor}")).await.json().await.expect("json");
    }
    out
}

#[tokio::test]
async fn the_client_address_is_the_rightmost_untrusted_one_across_all_forwarded_lines() {
    // The test client connects from 127.0.0.1, which plays the trusted proxy here.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let (_, key) =
        app.key(json!({"name": "pinned", "scopes": ["projects:read"], "allowed_ips": ["198.51.100.7/32"]})).await;
    let send = |lines: &'static [&'static str], rid: &'static str| {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_static(line));
        }
        app.client
            .get(format!("{}/v1/me", app.base))
            .bearer_auth(&key)
            .header("x-request-id", rid)
            .headers(headers)
            .send()
    };
    // The client forges a first line naming the allowed address; the proxy appends the real one
    // as a second line, as HAProxy does. The forged line must not win.
    let forged = send(&["198.51.100.7", "203.0.113.50"], "xff-forged").await.expect("send");
    problem(forged, 403, "forbidden").await;
    let denied = records_of(&app, "xff-forged").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["client_ip"], "203.0.113.50");
    // The real client behind two trusted hops (the first of them on its own line).
    let real = send(&["198.51.100.7", "127.0.0.1"], "xff-real").await.expect("send");
    assert_eq!(real.status(), StatusCode::OK);
    // Without TRUSTED_PROXIES the header is ignored: the peer is the client.
    let plain = spawn_app().await;
    let (_, key) =
        plain.key(json!({"name": "pinned", "scopes": ["projects:read"], "allowed_ips": ["198.51.100.7/32"]})).await;
    let res = plain
        .client
        .get(format!("{}/v1/me", plain.base))
        .bearer_auth(&key)
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .expect("send");
    problem(res, 403, "forbidden").await;
}

#[tokio::test]
async fn a_client_that_hangs_up_during_a_wait_is_audited_exactly_once() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    app.project("hang", 1).await;
    let body = json!({"command": ["sleep", "2"]}).to_string();
    let request = format!(
        "POST /v1/projects/hang/commands?wait=30 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         X-Request-Id: hang-up-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.admin,
        body.len()
    );
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    // Let the command be queued and the wait begin (right after it), then reset the connection.
    common::wait::eventually("the command is queued", std::time::Duration::from_secs(10), || async {
        let v: Value = app.get("/v1/projects/hang/commands").await.json().await.expect("json");
        v["items"].as_array().is_some_and(|items| !items.is_empty())
    })
    .await;
    #[expect(deprecated, reason = "SO_LINGER 0 is exactly how a test makes the close a reset")]
    stream.set_linger(Some(std::time::Duration::ZERO)).expect("linger");
    drop(stream);
    // The command still runs to its end; the request's record must exist once, never twice.
    let records = common::wait::poll(std::time::Duration::from_secs(10), || async {
        let found = records_of(&app, "hang-up-1").await;
        (!found.is_empty()).then_some(found)
    })
    .await
    .unwrap_or_default();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "client_closed", "{records:?}");
    assert_eq!(records[0]["detail"], "499");
    assert_eq!(records[0]["project"], "hang");
    assert_eq!(records[0]["action"], "POST /v1/projects/{name}/commands");
    assert!(records[0]["actor"].is_string(), "the key is named: {records:?}");
    // Wait past the command's end: the handler's late answer adds nothing.
    // Fixed sleep: proves a second record is *not* written; nothing happens to wait for.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(records_of(&app, "hang-up-1").await.len(), 1);
}

#[tokio::test]
async fn audit_reads_follow_project_visibility() {
    let app = spawn_app().await;
    app.project("alpha", 1).await;
    app.project("beta", 1).await;
    let done = app.submit("beta", json!({"command": ["sleep", "30"]})).await;
    let id = done["id"].as_str().expect("id").to_owned();
    let cancel = app
        .client
        .post(format!("{}/v1/commands/{id}/cancel", app.base))
        .bearer_auth(&app.admin)
        .header("x-request-id", "cancel-beta")
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancel.status(), StatusCode::OK);
    let limited = app.key_with(&["audit:read"], Some(&["alpha"])).await;
    let v: Value = app.call(Method::GET, "/v1/audit-log?limit=200", &limited, None).await.json().await.expect("json");
    let items = v["items"].as_array().expect("items");
    assert!(!items.is_empty(), "alpha's creation is visible");
    assert!(items.iter().all(|r| r["project"] == "alpha"), "only alpha's records: {items:?}");
    problem(app.call(Method::GET, "/v1/audit-log?project=beta", &limited, None).await, 404, "not_found").await;
    problem(app.call(Method::GET, "/v1/audit-log?project=nope", &limited, None).await, 404, "not_found").await;
    // An unlimited key sees records without a project too, and finds the cancel by project.
    let v: Value = app.get("/v1/audit-log?limit=200").await.json().await.expect("json");
    assert!(v["items"].as_array().expect("items").iter().any(|r| r["project"].is_null()));
    let v: Value = app.get("/v1/audit-log?project=beta&limit=200").await.json().await.expect("json");
    let cancelled = v["items"].as_array().expect("items").iter().find(|r| r["request_id"] == "cancel-beta").cloned();
    assert_eq!(cancelled.expect("the cancel is found by project")["action"], "POST /v1/commands/{id}/cancel");
}

/// Runs `rdev-api audit verify` on `db`, with the checkpoint key when given.
fn verify_cli(db: &str, key_file: Option<&std::path::Path>) -> (i32, Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"));
    cmd.args(["--database-url", db, "audit", "verify"]).env_remove("AUDIT_CHECKPOINT_KEY_FILE");
    if let Some(key) = key_file {
        cmd.arg("--audit-checkpoint-key-file").arg(key);
    }
    let out = cmd.output().expect("run audit verify");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    (out.status.code().unwrap_or(-1), report)
}

/// A copy of the database and its WAL, to tamper with while the original stays intact.
fn copy_db(app: &common::TestApp, name: &str) -> (String, std::path::PathBuf) {
    let src = app.dir.path().join("rdev.db");
    let dst = app.dir.path().join(format!("{name}.db"));
    // VACUUM INTO writes one consistent file including what is still in the WAL.
    let mut conn = diesel_conn(&src);
    diesel::RunQueryDsl::execute(diesel::sql_query(format!("VACUUM INTO '{}'", dst.display())), &mut conn)
        .expect("vacuum into");
    (format!("sqlite://{}", dst.display()), dst)
}

fn diesel_conn(path: &std::path::Path) -> diesel::SqliteConnection {
    diesel::Connection::establish(&path.display().to_string()).expect("open sqlite")
}

fn sql(conn: &mut diesel::SqliteConnection, statement: &str) {
    diesel::RunQueryDsl::execute(diesel::sql_query(statement), conn).unwrap_or_else(|e| panic!("{statement}: {e}"));
}

#[tokio::test]
async fn signed_checkpoints_expose_a_deleted_tail_and_a_recomputed_chain() {
    let key_dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_dir.path().join("checkpoint.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef-test-key\n").expect("key");
    let key_flag = key_file.display().to_string();
    let app = spawn_app_with(&["--audit-checkpoint-key-file", &key_flag, "--audit-checkpoint-records", "5"]).await;
    for i in 0..40 {
        app.project(&format!("p{i}"), 1).await;
    }
    let over_http: Value = app.get("/v1/audit-log/verify").await.json().await.expect("json");
    assert_eq!(over_http["ok"], true, "{over_http}");
    assert_eq!(over_http["completeness"], "proven", "{over_http}");
    assert!(over_http["proven_through_seq"].as_i64().unwrap_or(0) >= 35, "{over_http}");

    // Intact: ok with the key (proven), ok without it (unproven).
    let (intact, _) = copy_db(&app, "intact");
    let (code, report) = verify_cli(&intact, Some(&key_file));
    assert_eq!((code, &report["ok"], &report["completeness"]), (0, &json!(true), &json!("proven")), "{report}");
    let (code, report) = verify_cli(&intact, None);
    assert_eq!((code, &report["completeness"]), (0, &json!("unproven")), "{report}");

    // The last 20 records deleted: the chain that is left is consistent, the checkpoints are not.
    let (truncated, path) = copy_db(&app, "truncated");
    let mut conn = diesel_conn(&path);
    sql(&mut conn, "DROP TRIGGER audit_log_no_delete");
    sql(&mut conn, "DELETE FROM audit_log WHERE seq > (SELECT max(seq) - 20 FROM audit_log)");
    drop(conn);
    let (code, report) = verify_cli(&truncated, None);
    assert_eq!((code, &report["ok"]), (0, &json!(true)), "without the key nothing shows: {report}");
    let (code, report) = verify_cli(&truncated, Some(&key_file));
    assert_eq!((code, &report["ok"]), (1, &json!(false)), "{report}");
    assert!(report["checkpoint_error"].as_str().is_some_and(|e| e.contains("truncated")), "{report}");

    // One record edited and every later hash recomputed.
    let (rewritten, path) = copy_db(&app, "rewritten");
    let stores =
        app::stores::open(&rewritten.parse().expect("url"), app::stores::OpenOptions { migrate: false, pool_size: 1 })
            .await
            .expect("open copy");
    let records = domain::ports::AuditLog::scan(stores.audit.as_ref(), 0, 10_000).await.expect("scan");
    drop(stores);
    let mut conn = diesel_conn(&path);
    sql(&mut conn, "DROP TRIGGER audit_log_no_update");
    let mut prev = records[9].prev_hash;
    for r in &records[9..] {
        let mut entry = r.entry.clone();
        if r.seq == records[9].seq {
            entry.action = "nothing happened".into();
        }
        let sealed = domain::audit::seal(r.id, r.seq, entry, prev);
        prev = sealed.hash;
        sql(
            &mut conn,
            &format!(
                "UPDATE audit_log SET action = '{}', prev_hash = x'{}', hash = x'{}' WHERE seq = {}",
                sealed.entry.action.replace('\'', "''"),
                hex(&sealed.prev_hash),
                hex(&sealed.hash),
                r.seq
            ),
        );
    }
    drop(conn);
    let (code, report) = verify_cli(&rewritten, None);
    assert_eq!((code, &report["ok"]), (0, &json!(true)), "the recomputed chain fools a keyless check: {report}");
    let (code, report) = verify_cli(&rewritten, Some(&key_file));
    assert_eq!((code, &report["ok"]), (1, &json!(false)), "{report}");
    assert!(report["checkpoint_error"].as_str().is_some_and(|e| e.contains("rewritten")), "{report}");

    // A wrong key proves nothing: every checkpoint's signature fails.
    let wrong = key_dir.path().join("wrong.key");
    std::fs::write(&wrong, "another-key-of-at-least-thirty-two-bytes").expect("key");
    let (code, report) = verify_cli(&intact, Some(&wrong));
    assert_eq!((code, &report["ok"]), (1, &json!(false)), "{report}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the CLI against the test server's database.
async fn cli(app: &common::TestApp, args: &[&str]) -> std::process::Output {
    let db = format!("sqlite://{}/rdev.db", app.dir.path().display());
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"))
        .args(["--database-url", &db])
        .args(args)
        .env("USER", "ops-alice")
        .output()
        .await
        .expect("rdev-api runs")
}

#[tokio::test]
async fn keys_made_and_revoked_from_the_cli_are_audited_with_the_cli_as_actor_even_when_refused() {
    let app = spawn_app().await;
    let made = cli(&app, &["keys", "create", "--name", "ci", "--scope", "commands:read", "--json"]).await;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let id = serde_json::from_slice::<Value>(&made.stdout).expect("json")["id"].as_str().expect("id").to_owned();
    let revoked = cli(&app, &["keys", "revoke", &id]).await;
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let refused = cli(&app, &["keys", "revoke", "not-a-key-id"]).await;
    assert!(!refused.status.success(), "an unknown id is refused");

    let v: Value = app.get("/v1/audit-log?limit=200").await.json().await.expect("json");
    let by_cli: Vec<(String, String, String)> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("cli ")))
        .map(|r| {
            let detail = r["detail"].as_str().unwrap_or_default();
            assert!(detail.starts_with("actor=cli os_user=ops-alice"), "{detail}");
            assert!(r["actor"].is_null(), "no key acted: {r}");
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("action"), field("resource"), field("outcome"))
        })
        .collect();
    assert_eq!(
        by_cli,
        vec![
            ("cli keys create".into(), format!("api_key/{id}"), "success".into()),
            ("cli keys revoke".into(), format!("api_key/{id}"), "success".into()),
            ("cli keys revoke".into(), "api_key/not-a-key-id".into(), "failure".into()),
        ]
    );
    let verdict = cli(&app, &["audit", "verify"]).await;
    assert!(verdict.status.success(), "the chain holds: {}", String::from_utf8_lossy(&verdict.stdout));
}
