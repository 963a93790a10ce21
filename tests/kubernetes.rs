//! Kubernetes (DESIGN §10) from the binary: `trellis inject` on a file of every workload
//! kind, `trellis install` against `deploy/`, and `trellis injector` over TLS with
//! AdmissionReviews shaped like the API server's. What they produce is validated offline
//! against the Kubernetes 1.30 schema with `kubernetes-validate`, and the webhook's
//! JSONPatch is applied with Python's `jsonpatch` (both installed by .ci/run).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use trellis_testkit::*;

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The schema version checked (native sidecars need >= 1.29).
const KUBERNETES: &str = "1.30";

/// Whether the Python tools are here; where `TRELLIS_REQUIRE_KUBE_TOOLS` is set (CI) they must be.
fn python_tools() -> bool {
    ["kubernetes_validate", "jsonpatch"]
        .iter()
        .all(|m| python_module_available("kubernetes schema and JSONPatch checks", m, "TRELLIS_REQUIRE_KUBE_TOOLS"))
}

/// Validates every document of `file` strictly (unknown fields are errors).
fn validate(file: &Path) {
    if !python_tools() {
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBERNETES])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not validate against Kubernetes {KUBERNETES}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `trellis ARGS` with `stdin`; (exit code, stdout, stderr).
fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = trellis_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

fn docs(yaml: &str) -> Vec<Value> {
    trellis_kube::documents::parse(yaml).unwrap().into_iter().filter_map(|d| d.value).collect()
}

const APP: &str = include_str!("fixtures/kubernetes/app.yaml");

/// The pod spec of a workload document.
fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => &doc["spec"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

fn init_names(spec: &Value) -> Vec<String> {
    spec["initContainers"].as_array().into_iter().flatten().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn inject_adds_the_sidecar_to_every_workload_kind_and_nothing_else() {
    let pki = Pki::new();
    let bundle = pki.bundle();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.yaml");
    std::fs::write(&app, APP).unwrap();
    let (code, out, err) =
        run(&["inject", "-f", app.to_str().unwrap(), "--trust-bundle", bundle.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    let injected = docs(&out);
    let original = docs(APP);
    assert_eq!(injected.len(), original.len());

    let ca_pem = std::fs::read_to_string(&bundle).unwrap();
    for (doc, before) in injected.iter().zip(&original) {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        let workload =
            matches!(kind, "Pod" | "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob");
        let opted_out = name == "legacy";
        if !workload || opted_out {
            assert_eq!(doc, before, "{kind}/{name} passes through unchanged");
            continue;
        }
        let spec = pod_spec(doc);
        let names = init_names(spec);
        assert_eq!(names[..2], ["trellis-init", "trellis-proxy"], "{kind}/{name}");
        assert_eq!(names[2..], init_names(pod_spec(before))[..], "{kind}/{name}: the app's init containers follow");
        let init = &spec["initContainers"][0];
        let proxy = &spec["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
        assert_eq!(proxy["readinessProbe"]["httpGet"], json!({ "path": "/ready", "port": 9901 }));
        assert!(proxy["resources"]["limits"]["memory"].is_string());
        assert_eq!(
            init["securityContext"]["capabilities"],
            json!({ "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] })
        );
        assert_eq!(init["securityContext"]["privileged"], false);
        let volumes: Vec<&str> =
            spec["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert!(volumes.contains(&"trellis-credentials"), "{volumes:?}");
        let token = &spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "trellis-credentials").unwrap()["projected"]
            ["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "trellis");
        let template_meta = match kind {
            "Pod" => &doc["metadata"],
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
            _ => &doc["spec"]["template"]["metadata"],
        };
        assert_eq!(template_meta["annotations"]["trellis.dev/trust-bundle"], ca_pem.as_str());
    }
    // The skip annotations of the StatefulSet reach proxy-init.
    let db = injected.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let args: Vec<&str> =
        pod_spec(db)["initContainers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let flag = |f: &str| args.iter().position(|a| *a == f).map(|i| args[i + 1]);
    assert_eq!(flag("--skip-inbound-ports"), Some("9901,5432"));
    assert_eq!(flag("--skip-outbound-ports"), Some("443"));
    assert_eq!(flag("--skip-subnets"), Some("10.96.0.0/12"));
    assert!(err.contains("Deployment/web injected"), "{err}");
    assert!(err.contains("CronJob/legacy skipped: trellis.dev/inject: disabled"), "{err}");
    assert!(err.contains("warning: container web: the kubelet's plaintext readinessProbe on port 8080"), "{err}");

    // Injecting twice equals injecting once (here through stdin).
    let (code, again, err) = run(&["inject", "-f", "-", "--trust-bundle", bundle.to_str().unwrap()], &out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);

    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, &out).unwrap();
    validate(&file);
}

#[test]
fn malformed_input_exits_2_naming_the_document_and_line() {
    let pki = Pki::new();
    let bundle = pki.bundle();
    let b = bundle.to_str().unwrap();
    let broken = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n spec: {}\n";
    let (code, out, err) = run(&["inject", "-f", "-", "--trust-bundle", b], broken);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "nothing printed on error: {out}");
    assert!(err.contains("document 2 (line 9)"), "{err}");

    let bad_annotation = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {trellis.dev/skip-inbound-ports: \"80,http\"}\nspec: {containers: [{name: a, image: b}]}\n";
    let (code, _, err) = run(&["inject", "-f", "-", "--trust-bundle", b], bad_annotation);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("document 1 (line 1), Pod p: metadata.annotations[trellis.dev/skip-inbound-ports]"), "{err}");

    let (code, _, err) = run(&["inject", "-f", "/nonexistent.yaml", "--trust-bundle", b], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent.yaml"), "{err}");
}

#[test]
fn install_prints_what_deploy_keeps_and_it_validates() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/trellis.yaml");
    let (code, out, err) = run(&["install"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        std::fs::read_to_string(&deploy).unwrap(),
        "deploy/trellis.yaml is stale: regenerate it with `trellis install > deploy/trellis.yaml`"
    );
    validate(&deploy);

    // Another namespace and image, with the CA and admin token printed too.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let ca_dir = pki.dir.path().join("ca");
    let (code, out, err) = run(
        &[
            "install",
            "--namespace",
            "mesh",
            "--image",
            "registry.example/trellis:dev",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let manifests = docs(&out);
    let webhook = manifests.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").unwrap();
    let selector = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(selector["operator"], "NotIn");
    assert!(selector["values"].as_array().unwrap().contains(&json!("mesh")));
    assert!(selector["values"].as_array().unwrap().contains(&json!("trellis-system")));
    assert!(webhook["webhooks"][0]["clientConfig"]["caBundle"].is_string());
    assert!(manifests.iter().all(|d| d["kind"] != "Deployment"
        || d["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/trellis:dev"));
    let file = dir.path().join("install.yaml");
    std::fs::write(&file, &out).unwrap();
    validate(&file);

    let (code, _, err) = run(&["install", "--namespace", "Not_A_Label"], "");
    assert_eq!(code, 2);
    assert!(err.contains("--namespace"), "{err}");
}

/// A running `trellis injector` serving a certificate for `127.0.0.1` from `pki`.
struct Injector {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl Injector {
    fn start(pki: &Pki) -> Injector {
        let (cert, key) = pki.issue(
            "injector",
            "spiffe://trellis.local/ns/trellis-system/sa/trellis-injector",
            &["127.0.0.1", "trellis-injector.trellis-system.svc"],
        );
        let addr = listen_addr();
        let log = pki.path("injector.log");
        let (addr_s, bundle) = (addr.to_string(), pki.bundle());
        let args: [&std::ffi::OsStr; 9] = [
            "injector".as_ref(),
            "--addr".as_ref(),
            addr_s.as_ref(),
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
            "--trust-bundle".as_ref(),
            bundle.as_os_str(),
        ];
        let mut child = spawn_trellis(&args, &log, &[]);
        wait_ready_or_panic(&mut child, &log, "serving", Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Injector { child, addr, log }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts `body` to `/inject` over TLS, verifying the injector against the CA.
async fn review(injector: &Injector, pki: &Pki, body: &str, alpn: &[u8]) -> Got {
    let config = tls_client_config(&TlsClientOpts {
        roots: Some(pki.bundle()),
        alpn: vec![alpn.to_vec()],
        ..Default::default()
    });
    let mut conn = TlsConn::open(injector.addr, config, "127.0.0.1").await.unwrap();
    conn.send("POST", "/inject", body.to_owned()).await.unwrap()
}

/// Applies a JSON Patch with Python's `jsonpatch` (another implementation than ours).
fn apply_with_python(object: &Value, patch: &Value) -> Option<Value> {
    if !python_tools() {
        return None;
    }
    let script = "import json, sys, jsonpatch\nd = json.load(sys.stdin)\nprint(json.dumps(jsonpatch.apply_patch(d['object'], d['patch'])))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "object": object, "patch": patch }).to_string();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jsonpatch: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission").join(name)).unwrap()
}

fn decode_patch(response: &Value) -> Value {
    use base64::Engine;
    let b64 = response["patch"].as_str().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_patches_pods_like_inject_and_refuses_garbage() {
    let pki = Pki::new();
    let injector = Injector::start(&pki);
    let dir = tempfile::tempdir().unwrap();

    // A Deployment's pod, as the API server sends it (over HTTP/2, as it does).
    let create = fixture("deployment-pod-create.json");
    let got = review(&injector, &pki, &create, b"h2").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let answer = got.json();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "3f6d3a8e-52a1-4c55-9a0e-8d1b2f0c7e11");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    assert!(response["warnings"][0].as_str().unwrap().contains("readinessProbe on port 8080"), "{response}");
    let patch = decode_patch(response);
    let pod: Value = serde_json::from_str::<Value>(&create).unwrap()["request"]["object"].clone();
    let patched = apply_with_python(&pod, &patch);

    // The same pod through `trellis inject` (namespace from the review) is the same result.
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, pod.to_string()).unwrap();
    let (code, out, err) =
        run(&["inject", "-f", pod_file.to_str().unwrap(), "--trust-bundle", pki.bundle().to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    let by_cli = docs(&out).remove(0);
    if let Some(patched) = &patched {
        assert_eq!(patched, &by_cli, "the webhook's patch makes what `trellis inject` makes");
        let file = dir.path().join("patched.json");
        std::fs::write(&file, patched.to_string()).unwrap();
        validate(&file);
    }

    // Already injected: allowed, no patch (over HTTP/1.1 this time).
    let mut again: Value = serde_json::from_str(&create).unwrap();
    again["request"]["object"] = by_cli;
    let got = review(&injector, &pki, &again.to_string(), b"http/1.1").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["response"]["allowed"], true);
    assert!(got.json()["response"].get("patch").is_none(), "{}", got.text());

    // Opted out, and another kind: allowed, no patch, uid echoed.
    for (name, uid) in [
        ("pod-opt-out.json", "9a1c2b3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"),
        ("configmap-create.json", "c0ffee00-1111-4222-8333-944455556666"),
    ] {
        let got = review(&injector, &pki, &fixture(name), b"h2").await;
        assert_eq!(got.status, 200, "{name}: {}", got.text());
        let response = &got.json()["response"];
        assert_eq!((response["uid"].as_str(), &response["allowed"]), (Some(uid), &json!(true)), "{name}");
        assert!(response.get("patch").is_none(), "{name}: {response}");
    }

    // Garbage: 400 with the reason, and the injector goes on serving.
    for garbage in ["{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionRev", "[]", "{\"kind\": \"Pod\"}"] {
        let got = review(&injector, &pki, garbage, b"h2").await;
        assert_eq!(got.status, 400, "{garbage}: {}", got.text());
        assert!(got.json()["error"].as_str().unwrap().contains("not an AdmissionReview"), "{}", got.text());
    }
    let got = review(&injector, &pki, &create, b"http/1.1").await;
    assert_eq!(got.status, 200, "still serving: {}", got.text());
    let config = tls_client_config(&TlsClientOpts { roots: Some(pki.bundle()), ..Default::default() });
    let mut conn = TlsConn::open(injector.addr, config, "127.0.0.1").await.unwrap();
    assert_eq!(conn.get("/healthz").await.unwrap().status, 200);
    assert_eq!(conn.get("/inject").await.unwrap().status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injector_refuses_bad_files_and_oversized_reviews_and_follows_a_new_certificate() {
    let pki = Pki::new();
    // A trust bundle that is not PEM: exit 1 naming the file.
    let bogus = pki.path("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let (cert, key) = pki.issue("x", "spiffe://trellis.local/ns/trellis-system/sa/trellis-injector", &["127.0.0.1"]);
    let (code, _, err) = run(
        &["injector", "--addr", &listen_addr().to_string(), "--tls-cert", cert.to_str().unwrap()]
            .into_iter()
            .chain(["--tls-key", key.to_str().unwrap(), "--trust-bundle", bogus.to_str().unwrap()])
            .collect::<Vec<_>>(),
        "",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bogus.pem: no PEM certificate"), "{err}");

    let injector = Injector::start(&pki);
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(9 << 20));
    let got = review(&injector, &pki, &big, b"h2").await;
    assert_eq!(got.status, 413, "{}", got.text());

    // A renewed serving certificate (a Secret update) is used for new handshakes (a new
    // client config each time: a resumed session would show the old certificate).
    let config = || tls_client_config(&TlsClientOpts { roots: Some(pki.bundle()), ..Default::default() });
    let first = TlsConn::open(injector.addr, config(), "127.0.0.1").await.unwrap().seen.leaf.serial;
    std::thread::sleep(Duration::from_millis(20));
    let (cert, key) =
        pki.issue("injector", "spiffe://trellis.local/ns/trellis-system/sa/trellis-injector", &["127.0.0.1"]);
    assert!(cert.exists() && key.exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    loop {
        let leaf = TlsConn::open(injector.addr, config(), "127.0.0.1").await.unwrap().seen.leaf;
        if leaf.serial != first {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new certificate is not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_sidecar_writes_its_bootstrap_from_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run/proxy.yaml");
    // Without the pod's facts: exit 2 naming what is missing.
    let out = trellis_command()
        .args(["proxy", "--sidecar", "--config", config.to_str().unwrap()])
        .env_remove("TRELLIS_POD_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sidecar needs --pod-name"), "{out:?}");

    let mut child = trellis_command()
        .args(["proxy", "--sidecar", "--config", config.to_str().unwrap()])
        .env("TRELLIS_POD_NAME", "web-7d4b9c8f6-x2x9q")
        .env("TRELLIS_POD_NAMESPACE", "shop")
        .env("TRELLIS_POD_SERVICE_ACCOUNT", "web")
        .env("TRELLIS_POD_IP", "10.250.0.2")
        .env("TRELLIS_CONTROL_PLANE_API", "https://127.0.0.1:1")
        .env("TRELLIS_CONTROL_PLANE_DISCOVERY", "https://127.0.0.1:2")
        .env("TRELLIS_CREDENTIALS_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !config.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let bootstrap = docs(&std::fs::read_to_string(&config).unwrap()).remove(0);
    assert_eq!(bootstrap["identity"]["issuer"]["id"], "spiffe://trellis.local/ns/shop/sa/web");
    assert_eq!(bootstrap["identity"]["issuer"]["token_file"], dir.path().join("token").to_str().unwrap());
    assert_eq!(bootstrap["control_plane"]["inbound_address"], "10.250.0.2:4143");
    assert_eq!(bootstrap["node"]["service"], "web");
    assert!(bootstrap["listeners"].as_array().unwrap().iter().all(|l| l["transparent"] == true));
}
