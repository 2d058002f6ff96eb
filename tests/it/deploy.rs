//! The deployment artifacts under `deploy/` agree with the daemon they deploy: every
//! Kubernetes manifest parses; the ConfigMap's configuration is valid for sloxide; the
//! StatefulSet's ports, probes, data directory, configuration path, flags and variables
//! are the daemon's own; the Services select the pods they front; the gateway
//! Collector routes by service to the headless Service; the systemd unit is hardened
//! and starts the daemon with flags it has; the Dockerfile says the same as the
//! manifests. A port or a path that drifts on either side fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sloxide::config::Config;
use sloxide::config::duration::parse_duration;

use crate::harness::{self, Daemon};

/// Room for the final checkpoint after the drain: the full checkpoint takes a quarter
/// of a second of CPU at 100 000 series (docs/benchmarks.md), plus its fsyncs on a
/// volume that may be slow. Stop timeouts must cover the drain and this.
const CHECKPOINT_ROOM: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One YAML document of a manifest file.
struct Manifest {
    file: String,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Every document of every `.yaml` / `.yml` file under `deploy/kubernetes/`, in file
/// order. Documents that are empty (comments only) are skipped.
fn manifests() -> &'static [Manifest] {
    static MANIFESTS: OnceLock<Vec<Manifest>> = OnceLock::new();
    MANIFESTS.get_or_init(|| {
        let dir = repo().join("deploy/kubernetes");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no manifest under {}", dir.display());
        let mut out = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
            for doc in docs.into_iter().filter(|doc| !doc.is_null()) {
                assert!(
                    doc["apiVersion"].is_string() && doc["kind"].is_string(),
                    "{file}: a document without apiVersion or kind: {doc}"
                );
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "{file}: a {} without metadata.name",
                    doc["kind"]
                );
                out.push(Manifest {
                    file: file.clone(),
                    doc,
                });
            }
        }
        out
    })
}

/// The one object of `kind` named `name`.
fn object(kind: &str, name: &str) -> &'static Value {
    let found: Vec<&Manifest> = manifests()
        .iter()
        .filter(|m| m.kind() == kind && m.name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} named {name} under deploy/kubernetes/, found {}",
        found.len()
    );
    &found[0].doc
}

/// The one object of `kind`.
fn only(kind: &str) -> &'static Value {
    let found: Vec<&Manifest> = manifests().iter().filter(|m| m.kind() == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    &found[0].doc
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value}"))
}

fn number(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: expected a whole number, found {value}"))
}

/// The sloxide StatefulSet, its pod spec and its one container.
fn statefulset() -> &'static Value {
    only("StatefulSet")
}

fn sloxide_pod() -> &'static Value {
    &statefulset()["spec"]["template"]
}

fn sloxide_container() -> &'static Value {
    let containers = list(
        &sloxide_pod()["spec"]["containers"],
        "StatefulSet containers",
    );
    assert_eq!(containers.len(), 1, "the StatefulSet runs one container");
    &containers[0]
}

/// The container's environment as a map.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    list(&container["env"], "container env")
        .iter()
        .map(|var| {
            let name = text(&var["name"], "env name").to_owned();
            let value = text(&var["value"], &format!("env {name}")).to_owned();
            (name, value)
        })
        .collect()
}

/// The container's ports by name.
fn ports_of(container: &Value) -> BTreeMap<String, u64> {
    list(&container["ports"], "container ports")
        .iter()
        .map(|port| {
            let name = text(&port["name"], "port name").to_owned();
            let number = number(&port["containerPort"], &format!("port {name}"));
            (name, number)
        })
        .collect()
}

/// A probe's or a Service's port: a number, or the name of one of `ports`.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u64>, what: &str) -> u64 {
    match port {
        Value::String(name) => *ports
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no container port named {name}")),
        other => number(other, what),
    }
}

/// The sloxide configuration the ConfigMap holds, and the file name it is mounted as.
fn sloxide_config_text() -> (&'static str, String) {
    let container = sloxide_container();
    let env = env_of(container);
    let path = Path::new(env.get("SLOXIDE_CONFIG").expect("SLOXIDE_CONFIG is set"));
    let mount = mount_of(container, path.parent().unwrap());
    let volume = volume(sloxide_pod(), mount);
    let map_name = text(&volume["configMap"]["name"], "config volume's ConfigMap");
    let map = object("ConfigMap", map_name);
    // The key: the item mounted as the file's name, or the file's name itself.
    let file = path.file_name().unwrap().to_str().unwrap();
    let key = match volume["configMap"]["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|item| item["path"] == file)
            .map(|item| text(&item["key"], "item key"))
            .unwrap_or_else(|| panic!("ConfigMap {map_name}: no item mounted as {file}")),
        None => file,
    };
    let yaml = text(
        &map["data"][key],
        &format!("ConfigMap {map_name} data.{key}"),
    );
    (yaml, key.to_owned())
}

fn sloxide_config() -> Config {
    let (yaml, key) = sloxide_config_text();
    Config::from_yaml(yaml, &key)
        .unwrap_or_else(|e| panic!("the ConfigMap's {key} is not a valid configuration: {e}"))
}

/// The name of the volume mounted at exactly `dir` in `container` (no subPath: a
/// subPath mount never sees a ConfigMap update).
fn mount_of<'a>(container: &'a Value, dir: &Path) -> &'a str {
    let mounts = list(&container["volumeMounts"], "volumeMounts");
    let found = mounts
        .iter()
        .find(|m| Path::new(text(&m["mountPath"], "mountPath")) == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {}", dir.display()));
    assert!(
        found["subPath"].is_null(),
        "{} is mounted with a subPath",
        dir.display()
    );
    text(&found["name"], "volumeMount name")
}

/// The pod volume named `name`.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    list(&pod["spec"]["volumes"], "pod volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no pod volume named {name}"))
}

/// `sloxide run --help`, once.
fn run_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let output = Command::new(env!("CARGO_BIN_EXE_sloxide"))
            .args(["run", "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "sloxide run --help failed");
        String::from_utf8(output.stdout).unwrap()
    })
}

/// Asserts that every `--flag` among `args` is one of `sloxide run`'s.
fn assert_run_flags(args: &[String], what: &str) {
    let help = run_help();
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap();
        let listed = help
            .split(|c: char| c.is_whitespace() || c == ',')
            .any(|word| word == flag);
        assert!(listed, "{what}: {flag} is not a flag of `sloxide run`");
    }
}

/// The value following `flag` (or given as `flag=value`) in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
        }
    })
}

/// True when `selector` (matchLabels or a Service selector) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(key, value)| labels[key] == *value)
}

/// The namespace every namespaced object lives in.
fn namespace() -> &'static str {
    only("Namespace")["metadata"]["name"].as_str().unwrap()
}

#[test]
fn manifests_parse_and_hold_every_kind() {
    let kinds: BTreeSet<&str> = manifests().iter().map(Manifest::kind).collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "StatefulSet",
        "Service",
        "Deployment",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.contains(kind), "no {kind} under deploy/kubernetes/");
    }
    let ns = namespace();
    for m in manifests().iter().filter(|m| m.kind() != "Namespace") {
        assert_eq!(
            m.doc["metadata"]["namespace"],
            ns,
            "{}: {} {} is not in namespace {ns}",
            m.file,
            m.kind(),
            m.name()
        );
    }
}

/// The ConfigMap's configuration passes the crate's parser and `sloxide check`, and
/// keeps the daemon's default ports on every interface (the probes, the Services and
/// the Dockerfile rely on them).
#[test]
fn config_map_holds_a_valid_configuration() {
    let config = sloxide_config();
    let defaults = Config::default();
    for (key, got, want) in [
        (
            "otlp_grpc",
            config.listen.otlp_grpc,
            defaults.listen.otlp_grpc,
        ),
        (
            "otlp_http",
            config.listen.otlp_http,
            defaults.listen.otlp_http,
        ),
        ("metrics", config.listen.metrics, defaults.listen.metrics),
    ] {
        assert_eq!(
            got.port(),
            want.port(),
            "listen.{key}: the manifests use the daemon's default port"
        );
        assert!(
            got.ip().is_unspecified(),
            "listen.{key} is {got}: the kubelet and the other pods cannot reach it"
        );
    }
    assert_eq!(
        config.state.data_dir, None,
        "the ConfigMap leaves state.data_dir to SLOXIDE_DATA_DIR, which the StatefulSet sets"
    );

    let (yaml, key) = sloxide_config_text();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(&key);
    std::fs::write(&path, yaml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sloxide"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sloxide check refuses the ConfigMap's {key}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok,"));
}

#[test]
fn statefulset_runs_the_daemon_as_it_is() {
    let config = sloxide_config();
    let set = statefulset();
    let pod = sloxide_pod();
    let container = sloxide_container();
    let ports = ports_of(container);

    // Container ports: the configuration's.
    for (name, addr) in [
        ("otlp-grpc", config.listen.otlp_grpc),
        ("otlp-http", config.listen.otlp_http),
        ("metrics", config.listen.metrics),
    ] {
        assert_eq!(
            ports.get(name).copied(),
            Some(u64::from(addr.port())),
            "container port {name} is not the daemon's {addr}"
        );
    }

    // Probes: the daemon's health endpoints, on its metrics port.
    let metrics = u64::from(config.listen.metrics.port());
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(
            resolve_port(&get["port"], &ports, probe),
            metrics,
            "{probe} is not on the metrics port"
        );
    }

    // The data directory: the claim template's volume, mounted where SLOXIDE_DATA_DIR
    // points.
    let env = env_of(container);
    let data_dir = env
        .get("SLOXIDE_DATA_DIR")
        .expect("the StatefulSet sets SLOXIDE_DATA_DIR");
    let claims = list(&set["spec"]["volumeClaimTemplates"], "volumeClaimTemplates");
    assert_eq!(claims.len(), 1, "one volume claim template, for the data");
    let claim = &claims[0];
    assert_eq!(
        mount_of(container, Path::new(data_dir)),
        text(&claim["metadata"]["name"], "claim name"),
        "SLOXIDE_DATA_DIR={data_dir} is not the claimed volume"
    );
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");

    // The configuration file: where SLOXIDE_CONFIG points (sloxide_config_text follows
    // the path through the mount to the ConfigMap).
    let _ = sloxide_config_text();

    // Arguments and variables are the daemon's own.
    let args: Vec<String> = list(&container["args"], "container args")
        .iter()
        .map(|a| text(a, "arg").to_owned())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert_run_flags(&args, "the StatefulSet's args");
    assert!(
        args.iter().any(|a| a == "--watch-config"),
        "ConfigMap updates send no signal: the StatefulSet needs --watch-config"
    );
    for name in env.keys() {
        assert!(
            run_help().contains(&format!("[env: {name}")),
            "{name} is not a variable of `sloxide run`"
        );
    }

    // Stopping: the preStop pause, the drain and the final checkpoint fit in the grace
    // period.
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = number(
        &pod["spec"]["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    let needed = Duration::from_secs(pause) + sloxide::daemon::DRAIN_TIMEOUT + CHECKPOINT_ROOM;
    assert!(
        Duration::from_secs(grace) >= needed,
        "terminationGracePeriodSeconds {grace} < {needed:?} (pause, drain, checkpoint)"
    );

    // Security: non-root, read-only root, no capabilities, no escalation.
    let pod_security = &pod["spec"]["securityContext"];
    let security = &container["securityContext"];
    assert!(
        pod_security["runAsNonRoot"] == true || security["runAsNonRoot"] == true,
        "runAsNonRoot"
    );
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(
        list(&security["capabilities"]["drop"], "capabilities.drop")
            .iter()
            .any(|c| c == "ALL"),
        "the container drops ALL capabilities"
    );
    assert!(
        pod_security["fsGroup"].is_u64(),
        "fsGroup makes the data volume writable by the non-root user"
    );

    // Resources, with the pointer to the sizing.
    for side in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][side][resource].is_null(),
                "resources.{side}.{resource} is not set"
            );
        }
    }
    let file = manifests()
        .iter()
        .find(|m| m.kind() == "StatefulSet")
        .unwrap()
        .file
        .clone();
    let source = std::fs::read_to_string(repo().join("deploy/kubernetes").join(&file)).unwrap();
    assert!(
        source.contains("docs/deployment.md, \"Capacity model\""),
        "{file}: the resources comment points at docs/deployment.md's sizing"
    );
    let deployment_doc = std::fs::read_to_string(repo().join("docs/deployment.md")).unwrap();
    assert!(
        deployment_doc.lines().any(|l| l == "## Capacity model"),
        "docs/deployment.md has a \"## Capacity model\" section"
    );

    // Every pod is scraped, on its metrics port.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    assert!(
        selects(
            &set["spec"]["selector"]["matchLabels"],
            &pod["metadata"]["labels"]
        ),
        "the StatefulSet's selector does not select its own pods"
    );
}

#[test]
fn services_front_the_pods() {
    let pod_labels = &sloxide_pod()["metadata"]["labels"];
    let ports = ports_of(sloxide_container());
    let set = statefulset();
    let headless_name = text(&set["spec"]["serviceName"], "StatefulSet serviceName");

    let services: Vec<&Value> = manifests()
        .iter()
        .filter(|m| m.kind() == "Service")
        .map(|m| &m.doc)
        .filter(|s| selects(&s["spec"]["selector"], pod_labels))
        .collect();
    let headless: Vec<&Value> = services
        .iter()
        .copied()
        .filter(|s| s["spec"]["clusterIP"] == "None")
        .collect();
    assert_eq!(
        headless.len(),
        1,
        "one headless Service selects the sloxide pods"
    );
    let headless = headless[0];
    assert_eq!(
        headless["metadata"]["name"], headless_name,
        "the StatefulSet's serviceName is its headless Service"
    );
    let regular: Vec<&Value> = services
        .iter()
        .copied()
        .filter(|s| s["spec"]["clusterIP"] != "None")
        .collect();
    assert_eq!(
        regular.len(),
        1,
        "one ClusterIP Service selects the sloxide pods"
    );

    // Each Service port leads to the container port of the same name and number.
    for service in &services {
        let name = text(&service["metadata"]["name"], "Service name");
        for port in list(&service["spec"]["ports"], "Service ports") {
            let port_name = text(&port["name"], "Service port name");
            let target = resolve_port(&port["targetPort"], &ports, name);
            assert_eq!(
                ports.get(port_name).copied(),
                Some(target),
                "Service {name} port {port_name} leads to container port {target}"
            );
            assert_eq!(number(&port["port"], port_name), target, "Service {name}");
        }
    }
    for name in ["otlp-grpc", "otlp-http", "metrics"] {
        assert!(
            list(&regular[0]["spec"]["ports"], "ports")
                .iter()
                .any(|p| p["name"] == name),
            "the Service has no {name} port"
        );
    }
    assert!(
        list(&headless["spec"]["ports"], "ports")
            .iter()
            .any(|p| p["name"] == "otlp-grpc"),
        "the headless Service has no otlp-grpc port"
    );
}

#[test]
fn gateway_routes_by_service_to_the_headless_service() {
    let headless = text(&statefulset()["spec"]["serviceName"], "serviceName");
    let sloxide_grpc = u64::from(sloxide_config().listen.otlp_grpc.port());
    let deployment = only("Deployment");
    let pod = &deployment["spec"]["template"];
    let containers = list(&pod["spec"]["containers"], "gateway containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The Collector's configuration: the file named by --config, through its mount.
    let args: Vec<String> = list(&container["args"], "gateway args")
        .iter()
        .map(|a| text(a, "arg").to_owned())
        .collect();
    let path = Path::new(flag_value(&args, "--config").expect("the gateway's --config"));
    let volume = volume(pod, mount_of(container, path.parent().unwrap()));
    let map = object(
        "ConfigMap",
        text(&volume["configMap"]["name"], "gateway config volume"),
    );
    let key = path.file_name().unwrap().to_str().unwrap();
    let collector: Value = serde_saphyr::from_str(text(&map["data"][key], key))
        .unwrap_or_else(|e| panic!("the gateway's {key} is not valid YAML: {e}"));

    // The load balancing exporter, by either of its names.
    let exporters = collector["exporters"].as_object().expect("exporters");
    let (id, lb) = exporters
        .iter()
        .find(|(id, _)| {
            let kind = id.split('/').next().unwrap();
            kind == "load_balancing" || kind == "loadbalancing"
        })
        .expect("a load_balancing exporter");
    assert_eq!(lb["routing_key"], "service", "{id}: routing_key");
    let k8s = &lb["resolver"]["k8s"];
    assert_eq!(
        k8s["service"],
        format!("{headless}.{}", namespace()),
        "{id}: the k8s resolver names the headless Service"
    );
    let resolver_ports: Vec<u64> = list(&k8s["ports"], "resolver ports")
        .iter()
        .map(|p| number(p, "resolver port"))
        .collect();
    assert_eq!(
        resolver_ports,
        [sloxide_grpc],
        "{id}: the resolver sends to sloxide's OTLP/gRPC port"
    );
    // A compression the ConfigMap's limits.compression accepts (the Collector's names
    // for gRPC are sloxide's: gzip, zstd, snappy), or none.
    let compression = lb["protocol"]["otlp"]["compression"]
        .as_str()
        .unwrap_or("none");
    let accepted = sloxide_config().limits.compression;
    assert!(
        compression == "none" || accepted.iter().any(|c| c.as_str() == compression),
        "{id}: sloxide does not accept compression {compression} (limits.compression: {accepted:?})"
    );
    // Retries, at the load balancer (a ring with no replica) and per replica, end
    // within timing.late_slack, so a retried event still counts at its own time.
    let late_slack = sloxide_config().timing.late_slack;
    for (level, retry) in [
        ("load balancer", &lb["retry_on_failure"]),
        ("per replica", &lb["protocol"]["otlp"]["retry_on_failure"]),
    ] {
        assert_eq!(retry["enabled"], true, "{id}: no retries {level}");
        let elapsed = parse_duration(text(&retry["max_elapsed_time"], "max_elapsed_time"))
            .expect("max_elapsed_time");
        assert!(
            !elapsed.is_zero() && elapsed <= late_slack,
            "{id}: retries {level} for {elapsed:?}, past timing.late_slack {late_slack:?}"
        );
    }
    for pipeline in ["traces", "logs"] {
        let exporters = list(
            &collector["service"]["pipelines"][pipeline]["exporters"],
            pipeline,
        );
        assert!(
            exporters.iter().any(|e| e == id.as_str()),
            "the {pipeline} pipeline does not export through {id}"
        );
    }

    // The Collector's receiver ports are its container's and its Service's.
    let ports = ports_of(container);
    for (protocol, name) in [("grpc", "otlp-grpc"), ("http", "otlp-http")] {
        let endpoint = text(
            &collector["receivers"]["otlp"]["protocols"][protocol]["endpoint"],
            protocol,
        );
        let port: u64 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(ports.get(name).copied(), Some(port), "gateway {name}");
    }
    let service = manifests()
        .iter()
        .filter(|m| m.kind() == "Service")
        .find(|m| selects(&m.doc["spec"]["selector"], &pod["metadata"]["labels"]))
        .expect("a Service selects the gateway");
    for port in list(&service.doc["spec"]["ports"], "gateway Service ports") {
        let target = resolve_port(&port["targetPort"], &ports, "gateway Service");
        assert!(ports.values().any(|p| *p == target));
    }

    // The resolver may watch EndpointSlices.
    let account = text(&pod["spec"]["serviceAccountName"], "serviceAccountName");
    let _ = object("ServiceAccount", account);
    let binding = manifests()
        .iter()
        .filter(|m| m.kind() == "RoleBinding")
        .find(|m| {
            list(&m.doc["subjects"], "subjects")
                .iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
        })
        .expect("a RoleBinding for the gateway's ServiceAccount");
    let role = object(
        "Role",
        text(&binding.doc["roleRef"]["name"], "roleRef name"),
    );
    let granted = list(&role["rules"], "rules").iter().any(|rule| {
        let has = |key: &str, want: &str| {
            rule[key]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == want))
        };
        has("apiGroups", "discovery.k8s.io")
            && has("resources", "endpointslices")
            && ["get", "list", "watch"]
                .iter()
                .all(|verb| has("verbs", verb))
    });
    assert!(granted, "the gateway's Role cannot watch EndpointSlices");
}

/// The probe paths answer 200 on the daemon's metrics port, run on the ConfigMap's
/// configuration (on loopback ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_on_the_daemon() {
    let (yaml, _) = sloxide_config_text();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(yaml, &dir.path().join("data"), &[]);
    let container = sloxide_container();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = text(&container[probe]["httpGet"]["path"], probe);
        let (status, body) = daemon.get(path).await;
        assert_eq!(status, 200, "{probe} {path}: {body}");
    }
    let annotations = &sloxide_pod()["metadata"]["annotations"];
    let path = text(&annotations["prometheus.io/path"], "scrape path");
    let (status, _) = daemon.get(path).await;
    assert_eq!(status, 200, "scrape path {path}");
}

/// The test Collector (tests/peers/otelcol) validates the gateway's configuration.
#[test]
fn gateway_config_passes_the_collector() {
    // $SLOXIDE_OTELCOL, or where tests/peers/otelcol/build.sh puts it.
    let collector = std::env::var_os("SLOXIDE_OTELCOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"))
                .join("peers/otelcol-sloxide-test")
        });
    if !harness::require(
        collector.is_file(),
        &format!(
            "the test Collector at {} (bash tests/peers/otelcol/build.sh)",
            collector.display()
        ),
    ) {
        return;
    }
    let map = object("ConfigMap", "sloxide-gateway-config");
    let data = map["data"].as_object().expect("data");
    assert_eq!(data.len(), 1, "the gateway ConfigMap holds one file");
    let (key, yaml) = data.iter().next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(key);
    std::fs::write(&path, text(yaml, key)).unwrap();
    let output = Command::new(&collector)
        .arg("validate")
        .arg(format!("--config={}", path.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the Collector refuses the gateway's {key}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A systemd unit: section → key → every value given (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Reads a unit file: `[Section]` lines, `Key=value` lines, `#` and `;` comments,
/// backslash continuations.
fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(rest) = line.strip_suffix('\\') {
            pending.push_str(rest);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            unit.entry(section.clone()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a unit line: {line}"));
        assert!(!section.is_empty(), "{key} outside a section");
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

#[test]
fn systemd_unit_is_hardened_and_runs_the_daemon() {
    let text = std::fs::read_to_string(repo().join("deploy/systemd/sloxide.service")).unwrap();
    let unit = parse_unit(&text);
    let service = unit.get("Service").expect("a [Service] section");
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] {key} is not set"));
        values.last().unwrap()
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(key), want, "[Service] {key}");
    }
    let families: BTreeSet<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
        "RestrictAddressFamilies"
    );
    assert!(
        service["SystemCallFilter"]
            .iter()
            .any(|v| v.split_whitespace().any(|s| s == "@system-service")),
        "SystemCallFilter allows @system-service"
    );
    assert!(
        one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 4096),
        "LimitNOFILE"
    );
    let reload = one("ExecReload");
    assert!(
        reload.contains("-HUP") && reload.contains("$MAINPID"),
        "ExecReload sends SIGHUP to the daemon: {reload}"
    );
    let stop = parse_duration(one("TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(
        stop >= sloxide::daemon::DRAIN_TIMEOUT + CHECKPOINT_ROOM,
        "TimeoutStopSec {stop:?} leaves no room for the drain and the final checkpoint"
    );

    // ExecStart: `sloxide run` with flags it has; the data directory is the
    // StateDirectory, the configuration in the ConfigurationDirectory.
    let args: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(
        args[0].ends_with("/sloxide"),
        "ExecStart runs sloxide: {}",
        args[0]
    );
    assert_eq!(args.get(1).map(String::as_str), Some("run"));
    assert_run_flags(&args[2..], "ExecStart");
    let state = one("StateDirectory");
    assert_eq!(
        flag_value(&args, "--data-dir"),
        Some(format!("/var/lib/{state}").as_str()),
        "ExecStart's --data-dir is the StateDirectory"
    );
    let config_dir = one("ConfigurationDirectory");
    let config = flag_value(&args, "--config").expect("ExecStart gives --config");
    assert_eq!(
        Path::new(config).parent(),
        Some(Path::new(&format!("/etc/{config_dir}"))),
        "ExecStart's --config is in the ConfigurationDirectory"
    );
}

/// The Dockerfile's ports, variables and user are the manifests'.
#[test]
fn dockerfile_agrees_with_the_manifests() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // Only the last stage (the runtime image) counts.
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let mut exposed = BTreeSet::new();
    let mut env = BTreeMap::new();
    let mut user = None;
    for line in runtime.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("EXPOSE") => exposed.extend(words.map(|p| p.parse::<u64>().unwrap())),
            Some("ENV") => {
                for pair in words {
                    let (key, value) = pair.split_once('=').unwrap();
                    env.insert(key.to_owned(), value.to_owned());
                }
            }
            Some("USER") => user = words.next().map(str::to_owned),
            _ => {}
        }
    }
    let ports: BTreeSet<u64> = ports_of(sloxide_container()).into_values().collect();
    assert_eq!(
        exposed, ports,
        "the Dockerfile's EXPOSE and the container ports"
    );
    let container_env = env_of(sloxide_container());
    for key in ["SLOXIDE_CONFIG", "SLOXIDE_DATA_DIR"] {
        assert_eq!(
            env.get(key),
            container_env.get(key),
            "{key} in the Dockerfile and the StatefulSet"
        );
    }
    let uid = number(
        &sloxide_pod()["spec"]["securityContext"]["runAsUser"],
        "runAsUser",
    );
    assert_eq!(
        user.as_deref(),
        Some(uid.to_string().as_str()),
        "the Dockerfile's USER is the pod's runAsUser"
    );
}
