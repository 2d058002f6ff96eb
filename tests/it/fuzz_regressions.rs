//! The fuzz targets' findings, kept: every file under `fuzz/regressions/<target>/` (an
//! input that once crashed that target; fuzz/README.md says how one gets there) and every
//! seed under `fuzz/seeds/<target>/` runs through the target's own body,
//! `sloxide::fuzz::<target>`, exactly as `cargo fuzz` runs it. Also: the seeds still
//! reach the code they were made for, and are the ones `seeds` makes.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use prost::Message;
use sloxide::fixture::{self, Shape};
use sloxide::ingest::{Encoding, Format};
use sloxide::state::SloDecision;
use sloxide::state::file;
use sloxide::state::snapshot::Scope;
use sloxide::telemetry::{Signal, Transport};

fn fuzz_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
}

/// The files under `fuzz/<kind>/<target>/`, by target, sorted; dot files are left out.
fn inputs(kind: &str) -> Vec<(String, Vec<PathBuf>)> {
    let root = fuzz_dir(kind);
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<PathBuf>)> = dirs
        .map(|d| d.unwrap().path())
        .filter(|d| d.is_dir())
        .map(|dir| {
            let target = dir.file_name().unwrap().to_string_lossy().into_owned();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|f| f.unwrap().path())
                .filter(|f| {
                    f.is_file() && !f.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect();
            files.sort();
            (target, files)
        })
        .collect();
    out.sort();
    out
}

/// Runs every input under `fuzz/<kind>/` through its target, and names every one that
/// panics (each panic's message is printed above). Returns how many ran.
fn replay(kind: &str) -> usize {
    let mut ran = 0;
    let mut failed = Vec::new();
    for (target, files) in inputs(kind) {
        let body = sloxide::fuzz::target(&target).unwrap_or_else(|| {
            panic!("fuzz/{kind}/{target}: there is no fuzz target named {target}")
        });
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failed.push(file.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "these inputs fail their target: {failed:#?}"
    );
    ran
}

#[test]
fn every_regression_input_passes_its_target() {
    replay("regressions");
}

#[test]
fn every_seed_passes_its_target_and_reaches_the_decoders() {
    let ran = replay("seeds");
    let targets: Vec<String> = inputs("seeds").into_iter().map(|(t, _)| t).collect();
    let all: Vec<&str> = sloxide::fuzz::TARGETS.iter().map(|(t, _)| *t).collect();
    assert_eq!(targets, sorted(&all), "every target has seeds");
    assert!(ran >= 20, "{ran} seeds");
    for (target, files) in inputs("seeds") {
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let name = file.display();
            match target.as_str() {
                "http_body" => {
                    let accepted = sloxide::fuzz::http_body(&data);
                    assert!(
                        accepted.is_some_and(|a| a.accepted > 0),
                        "{name}: {accepted:?}"
                    );
                }
                "checkpoint" => {
                    let report = sloxide::fuzz::checkpoint(&data)
                        .unwrap_or_else(|| panic!("{name} does not decode"));
                    let kept = report
                        .slos
                        .iter()
                        .filter(|(_, d)| *d == SloDecision::Kept)
                        .count();
                    assert_eq!(kept, 3, "{name}: {report:?}");
                    assert!(report.series[3] > 0, "{name}: {report:?}");
                    if report.counters {
                        assert!(report.series.iter().all(|n| *n > 0), "{name}: {report:?}");
                    }
                }
                "config" => {
                    let text = std::str::from_utf8(&data).unwrap();
                    sloxide::config::Config::from_yaml(text, "seed.yaml")
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                _ => {}
            }
        }
    }
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    out.sort();
    out
}

/// Requests of spans and logs on the services of `sloxide::fuzz::CONFIG`'s SLOs, at its
/// time.
fn shape() -> Shape {
    Shape {
        resources: 2,
        per_resource: 4,
        services: 2,
        service_names: vec!["checkout".into(), "deployer".into()],
        regions: vec!["eu-west-1".into(), "us-east-1".into()],
        error_every: 3,
        end_unix_nanos: sloxide::fuzz::NOW_SECS * 1_000_000_000,
    }
}

fn compress(format: Format, body: &[u8]) -> Vec<u8> {
    let level = flate2::Compression::fast();
    match format {
        Format::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
            enc.write_all(body).unwrap();
            enc.finish().unwrap()
        }
        Format::Zlib => {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), level);
            enc.write_all(body).unwrap();
            enc.finish().unwrap()
        }
        Format::Zstd => zstd::bulk::compress(body, 3).unwrap(),
        Format::Snappy => snap::raw::Encoder::new().compress_vec(body).unwrap(),
        Format::SnappyFramed => {
            let mut enc = snap::write::FrameEncoder::new(Vec::new());
            enc.write_all(body).unwrap();
            enc.into_inner().unwrap()
        }
    }
}

/// The seeds, by target: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let traces = fixture::traces(&shape());
    let logs = fixture::logs(&shape());
    let (traces_pb, logs_pb) = (traces.encode_to_vec(), logs.encode_to_vec());
    let traces_json = serde_json::to_vec(&traces).unwrap();
    let logs_json = serde_json::to_vec(&logs).unwrap();
    let mut out = vec![
        ("walk_traces", "traces.pb".to_owned(), traces_pb.clone()),
        ("walk_logs", "logs.pb".to_owned(), logs_pb.clone()),
        ("json", "traces.json".to_owned(), traces_json.clone()),
        ("json", "logs.json".to_owned(), logs_json.clone()),
    ];
    for (name, text) in [
        ("default.yaml", sloxide::config::DEFAULT_YAML),
        ("example.yaml", include_str!("../../config/example.yaml")),
        ("fuzz.yaml", sloxide::fuzz::CONFIG),
    ] {
        out.push(("config", name.to_owned(), text.as_bytes().to_vec()));
    }

    // The body path: traces in protobuf under every compression, then logs and JSON.
    let formats = [
        (None, "none"),
        (Some(Format::Gzip), "gzip"),
        (Some(Format::Zstd), "zstd"),
        (Some(Format::Zlib), "zlib"),
        (Some(Format::Snappy), "snappy"),
        (Some(Format::SnappyFramed), "snappy-framed"),
    ];
    let bodies = [
        (
            Signal::Traces,
            Encoding::Protobuf,
            "traces-protobuf",
            &traces_pb,
        ),
        (Signal::Logs, Encoding::Protobuf, "logs-protobuf", &logs_pb),
        (Signal::Traces, Encoding::Json, "traces-json", &traces_json),
        (Signal::Logs, Encoding::Json, "logs-json", &logs_json),
    ];
    for (i, (format, format_name)) in formats.iter().enumerate() {
        for (j, (signal, encoding, body_name, body)) in bodies.iter().enumerate() {
            // Every format with protobuf traces; each other body under two formats.
            if j != 0 && (i + j) % 3 != 0 {
                continue;
            }
            let compressed = match format {
                Some(f) => compress(*f, body),
                None => body.to_vec(),
            };
            out.push((
                "http_body",
                format!("{body_name}-{format_name}"),
                sloxide::fuzz::http_body_input(*format, *signal, *encoding, &compressed),
            ));
        }
    }

    // Checkpoints of a pipeline that recorded both requests, from the fuzz config.
    let p = sloxide::fuzz::pipeline();
    for (signal, body) in [(Signal::Traces, &traces_pb), (Signal::Logs, &logs_pb)] {
        let accepted = p
            .ingest
            .export(Transport::Http, signal, Encoding::Protobuf, body)
            .unwrap();
        assert!(accepted.accepted > 0);
    }
    p.tick();
    let clean = p.checkpoint(Scope::Everything, true);
    let periodic = p.checkpoint(Scope::Windows, false);
    let checkpoint_input = sloxide::fuzz::checkpoint_input;
    out.extend([
        (
            "checkpoint",
            "clean.file".to_owned(),
            checkpoint_input(true, false, &file::encode(&clean)),
        ),
        (
            "checkpoint",
            "periodic.file".to_owned(),
            checkpoint_input(false, false, &file::encode(&periodic)),
        ),
        (
            "checkpoint",
            "clean.message".to_owned(),
            checkpoint_input(true, false, &clean.encode_to_vec()),
        ),
        (
            "checkpoint",
            "periodic.message".to_owned(),
            checkpoint_input(false, false, &periodic.encode_to_vec()),
        ),
    ]);
    out
}

/// The committed seeds are the ones `seeds` makes (by name: a checkpoint's bytes follow
/// the series' order in memory); `SLOXIDE_BLESS=1` writes them into `fuzz/seeds/`,
/// replacing what is there.
#[test]
fn the_seeds_are_current() {
    let root = fuzz_dir("seeds");
    let seeds = seeds();
    if std::env::var("SLOXIDE_BLESS").is_ok_and(|v| v == "1") {
        for (target, _) in sloxide::fuzz::TARGETS {
            let dir = root.join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (target, name, bytes) in &seeds {
            std::fs::write(root.join(target).join(name), bytes).unwrap();
        }
    }
    let mut made: Vec<String> = seeds
        .iter()
        .map(|(target, name, _)| format!("{target}/{name}"))
        .collect();
    made.sort();
    let committed: Vec<String> = inputs("seeds")
        .into_iter()
        .flat_map(|(target, files)| {
            files
                .into_iter()
                .map(move |f| format!("{target}/{}", f.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert_eq!(
        committed, made,
        "fuzz/seeds/ is stale: SLOXIDE_BLESS=1 cargo test --test it fuzz_regressions::the_seeds_are_current"
    );
}
