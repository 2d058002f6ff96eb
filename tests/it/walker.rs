//! The zero-copy walkers against prost: for generated requests, with fields reordered
//! and unknown fields inserted, the walker's extraction equals the reference extraction
//! over prost's decoding of the same bytes.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;
use sloxide::otlp::json::{fill_logs, fill_traces};
use sloxide::otlp::logs::{LogBatch, walk_logs, walk_logs_pieces};
use sloxide::otlp::spans::{TraceBatch, walk_traces, walk_traces_pieces};
use sloxide::otlp::{AttrKeys, Batch, Value};

// ---- a tiny protobuf writer whose field order we control ----

#[derive(Debug, Clone)]
enum Payload {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
    Msg(Vec<(u32, Payload)>),
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode(fields: &[(u32, Payload)], out: &mut Vec<u8>) {
    for (num, p) in fields {
        let wire = match p {
            Payload::Varint(_) => 0,
            Payload::Fixed64(_) => 1,
            Payload::Bytes(_) | Payload::Msg(_) => 2,
            Payload::Fixed32(_) => 5,
        };
        put_varint(u64::from(*num) << 3 | wire, out);
        match p {
            Payload::Varint(v) => put_varint(*v, out),
            Payload::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Payload::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Payload::Bytes(b) => {
                put_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Payload::Msg(m) => {
                let mut inner = Vec::new();
                encode(m, &mut inner);
                put_varint(inner.len() as u64, out);
                out.extend_from_slice(&inner);
            }
        }
    }
}

/// Deterministic shuffling and unknown-field insertion from a seed.
struct Mangler(u64);

impl Mangler {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Shuffles the fields and sometimes adds unknown ones (numbers 1000+, every wire type).
    fn mangle(&mut self, mut fields: Vec<(u32, Payload)>) -> Vec<(u32, Payload)> {
        let n = fields.len();
        for i in (1..n).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            fields.swap(i, j);
        }
        if self.next().is_multiple_of(3) {
            let at = (self.next() % (fields.len() as u64 + 1)) as usize;
            let unknown = match self.next() % 4 {
                0 => Payload::Varint(self.next()),
                1 => Payload::Fixed64(self.next()),
                2 => Payload::Fixed32(self.next() as u32),
                _ => Payload::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
            };
            fields.insert(at, (1000 + (self.next() % 50) as u32, unknown));
        }
        fields
    }
}

fn s(v: &str) -> Payload {
    Payload::Bytes(v.as_bytes().to_vec())
}

fn any_value_fields(v: &AnyValue, m: &mut Mangler) -> Vec<(u32, Payload)> {
    let f = match &v.value {
        None => vec![],
        Some(any_value::Value::StringValue(x)) => vec![(1, s(x))],
        Some(any_value::Value::BoolValue(x)) => vec![(2, Payload::Varint(u64::from(*x)))],
        Some(any_value::Value::IntValue(x)) => vec![(3, Payload::Varint(*x as u64))],
        Some(any_value::Value::DoubleValue(x)) => vec![(4, Payload::Fixed64(x.to_bits()))],
        Some(any_value::Value::ArrayValue(a)) => {
            vec![(5, Payload::Bytes(a.encode_to_vec()))]
        }
        Some(any_value::Value::BytesValue(b)) => vec![(7, Payload::Bytes(b.clone()))],
        Some(other) => unreachable!("the generators do not produce {other:?}"),
    };
    m.mangle(f)
}

fn kv_fields(kv: &KeyValue, m: &mut Mangler) -> Vec<(u32, Payload)> {
    let mut f = vec![(1, s(&kv.key))];
    if let Some(v) = &kv.value {
        let inner = any_value_fields(v, m);
        f.push((2, Payload::Msg(inner)));
    }
    m.mangle(f)
}

fn resource_fields(r: &Resource, m: &mut Mangler) -> Vec<(u32, Payload)> {
    let mut f: Vec<_> = r
        .attributes
        .iter()
        .map(|kv| (1, Payload::Msg(kv_fields(kv, m))))
        .collect();
    if r.dropped_attributes_count != 0 {
        f.push((2, Payload::Varint(u64::from(r.dropped_attributes_count))));
    }
    m.mangle(f)
}

fn span_fields(sp: &Span, m: &mut Mangler) -> Vec<(u32, Payload)> {
    let mut f = vec![
        (1, Payload::Bytes(sp.trace_id.clone())),
        (2, Payload::Bytes(sp.span_id.clone())),
        (5, s(&sp.name)),
        (6, Payload::Varint(sp.kind as u64)),
        (7, Payload::Fixed64(sp.start_time_unix_nano)),
        (8, Payload::Fixed64(sp.end_time_unix_nano)),
        (16, Payload::Fixed32(sp.flags)),
    ];
    for kv in &sp.attributes {
        f.push((9, Payload::Msg(kv_fields(kv, m))));
    }
    if let Some(st) = &sp.status {
        let st = m.mangle(vec![
            (2, s(&st.message)),
            (3, Payload::Varint(st.code as u64)),
        ]);
        f.push((15, Payload::Msg(st)));
    }
    // Fields the walker steps over: trace_state, parent_span_id, an event, a link.
    if m.next().is_multiple_of(2) {
        f.push((3, s("k=v")));
        f.push((4, Payload::Bytes(vec![3; 8])));
        f.push((11, Payload::Msg(vec![(2, s("event"))])));
        f.push((13, Payload::Msg(vec![(1, Payload::Bytes(vec![1; 16]))])));
    }
    if m.next().is_multiple_of(3) {
        m.mangle(f)
    } else {
        // Field-number order, as SDKs write it (the walker's in-order path), sometimes
        // with a field repeated after the rest: the later one wins, as in prost.
        f.sort_by_key(|(n, _)| *n);
        match m.next() % 4 {
            0 => f.push((5, s("again"))),
            1 => f.push((8, Payload::Fixed64(sp.start_time_unix_nano.wrapping_add(7)))),
            2 => f.push((15, Payload::Msg(vec![(3, Payload::Varint(2))]))),
            _ => {}
        }
        f
    }
}

fn traces_bytes(req: &ExportTraceServiceRequest, m: &mut Mangler) -> Vec<u8> {
    let top: Vec<_> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let mut f = Vec::new();
            if let Some(r) = &rs.resource {
                f.push((1, Payload::Msg(resource_fields(r, m))));
            }
            for ss in &rs.scope_spans {
                let mut sf = vec![(3, s(&ss.schema_url))];
                for sp in &ss.spans {
                    sf.push((2, Payload::Msg(span_fields(sp, m))));
                }
                // Spans keep their relative order (the batch is ordered), the rest moves.
                f.push((2, Payload::Msg(sf)));
            }
            f.push((3, s(&rs.schema_url)));
            (1, Payload::Msg(m.mangle_keep_order(f, 2)))
        })
        .collect();
    let mut out = Vec::new();
    encode(&top, &mut out);
    out
}

fn record_fields(rec: &LogRecord, m: &mut Mangler) -> Vec<(u32, Payload)> {
    let mut f = vec![
        (1, Payload::Fixed64(rec.time_unix_nano)),
        (11, Payload::Fixed64(rec.observed_time_unix_nano)),
        (2, Payload::Varint(rec.severity_number as u64)),
        (3, s(&rec.severity_text)),
    ];
    for kv in &rec.attributes {
        f.push((6, Payload::Msg(kv_fields(kv, m))));
    }
    m.mangle(f)
}

fn logs_bytes(req: &ExportLogsServiceRequest, m: &mut Mangler) -> Vec<u8> {
    let top: Vec<_> = req
        .resource_logs
        .iter()
        .map(|rl| {
            let mut f = Vec::new();
            if let Some(r) = &rl.resource {
                f.push((1, Payload::Msg(resource_fields(r, m))));
            }
            for sl in &rl.scope_logs {
                let mut lf = Vec::new();
                for rec in &sl.log_records {
                    lf.push((2, Payload::Msg(record_fields(rec, m))));
                }
                f.push((2, Payload::Msg(lf)));
            }
            (1, Payload::Msg(m.mangle_keep_order(f, 2)))
        })
        .collect();
    let mut out = Vec::new();
    encode(&top, &mut out);
    out
}

impl Mangler {
    /// Moves fields other than `keep` around while fields numbered `keep` stay in order.
    fn mangle_keep_order(&mut self, fields: Vec<(u32, Payload)>, keep: u32) -> Vec<(u32, Payload)> {
        let (kept, others): (Vec<_>, Vec<_>) = fields.into_iter().partition(|(n, _)| *n == keep);
        let mut out = kept;
        for f in others {
            let at = (self.next() % (out.len() as u64 + 1)) as usize;
            out.insert(at, f);
        }
        out
    }
}

// ---- generators ----

const KEYS: [&str; 6] = [
    "service.name",
    "cloud.region",
    "http.route",
    "http.response.status_code",
    "other.key",
    "service.namespace",
];

fn any_value() -> impl Strategy<Value = Option<AnyValue>> {
    prop_oneof![
        Just(None),
        Just(Some(AnyValue { value: None })),
        "[a-z0-9/ {}.-]{0,12}".prop_map(|v| Some(AnyValue {
            value: Some(any_value::Value::StringValue(v))
        })),
        any::<bool>().prop_map(|v| Some(AnyValue {
            value: Some(any_value::Value::BoolValue(v))
        })),
        // Every varint length: the walker reads one- and two-byte integers inline.
        prop_oneof![
            any::<i64>(),
            0i64..128,
            128i64..16384,
            16384i64..3_000_000,
            -5i64..0
        ]
        .prop_map(|v| Some(AnyValue {
            value: Some(any_value::Value::IntValue(v))
        })),
        (-1e9f64..1e9).prop_map(|v| Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(v))
        })),
        Just(Some(AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![] }))
        })),
        Just(Some(AnyValue {
            value: Some(any_value::Value::BytesValue(vec![1, 2, 3]))
        })),
    ]
}

fn key_values() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        (prop::sample::select(&KEYS[..]), any_value()).prop_map(|(k, v)| KeyValue {
            key: k.to_owned(),
            value: v,
            ..Default::default()
        }),
        0..6,
    )
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Resource::default())),
        4 => key_values().prop_map(|attributes| Some(Resource { attributes, ..Default::default() })),
    ]
}

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1u64..10,
        1_700_000_000_000_000_000u64..1_700_000_000_000_100_000
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        "[A-Z]{0,3} /[a-z]{0,6}",
        0i32..7,
        time(),
        time(),
        key_values(),
        prop::option::of(0i32..4),
    )
        .prop_map(|(name, kind, start, end, attributes, status)| Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: status.map(|code| Status {
                code,
                message: "m".into(),
            }),
            ..Default::default()
        })
}

fn trace_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    prop::collection::vec(
        (
            resource(),
            prop::collection::vec(prop::collection::vec(span(), 0..5), 0..3),
        )
            .prop_map(|(resource, scopes)| ResourceSpans {
                resource,
                scope_spans: scopes
                    .into_iter()
                    .map(|spans| ScopeSpans {
                        spans,
                        ..Default::default()
                    })
                    .collect(),
                schema_url: "https://opentelemetry.io/schemas/1.0".into(),
            }),
        0..4,
    )
    .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn log_request() -> impl Strategy<Value = ExportLogsServiceRequest> {
    let record =
        (time(), time(), 0i32..25, key_values()).prop_map(|(t, o, sev, attributes)| LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: o,
            severity_number: sev,
            severity_text: "x".into(),
            attributes,
            ..Default::default()
        });
    prop::collection::vec(
        (
            resource(),
            prop::collection::vec(prop::collection::vec(record, 0..5), 0..3),
        )
            .prop_map(|(resource, scopes)| ResourceLogs {
                resource,
                scope_logs: scopes
                    .into_iter()
                    .map(|log_records| ScopeLogs {
                        log_records,
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }),
        0..4,
    )
    .prop_map(|resource_logs| ExportLogsServiceRequest { resource_logs })
}

fn keys() -> AttrKeys {
    AttrKeys::new(["cloud.region", "http.route", "http.response.status_code"])
}

fn assert_same<E: PartialEq + std::fmt::Debug>(walked: &Batch<'_, E>, reference: &Batch<'_, E>) {
    assert_eq!(walked.resources, reference.resources);
    assert_eq!(walked.events, reference.events);
    // As `Value::same` compares: doubles by their bits, so a NaN is the same NaN.
    assert_eq!(walked.values.len(), reference.values.len());
    for (i, (w, r)) in walked.values.iter().zip(&reference.values).enumerate() {
        assert!(w.same(r), "value {i}: {w:?} against {r:?}");
    }
    assert_eq!(walked.rejected, reference.rejected);
    assert_eq!(walked.reject_reason, reference.reject_reason);
}

/// `junk` bytes and then `bytes`, cut into pieces at `cuts` (empty pieces included).
fn pieces(junk: usize, bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut whole = vec![0xa5; junk];
    whole.extend_from_slice(bytes);
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(whole.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in at {
        out.push(whole[from..cut].to_vec());
        from = cut;
    }
    out.push(whole[from..].to_vec());
    out
}

/// Walking `bytes` in pieces gives what walking it in one piece gives: the same batch,
/// or the same error.
fn assert_pieces_walk_as_one(bytes: &[u8], junk: usize, cuts: &[prop::sample::Index]) {
    let keys = keys();
    let parts = pieces(junk, bytes, cuts);
    let mut joined = Vec::new();
    let mut one = TraceBatch::default();
    let mut many = TraceBatch::default();
    let a = walk_traces(bytes, &keys, &mut one);
    let b = walk_traces_pieces(&parts, junk, &mut joined, &keys, &mut many);
    assert_eq!(a, b, "traces, cut at {cuts:?}");
    if a.is_ok() {
        assert_same(&many, &one);
    }
    let mut joined = Vec::new();
    let mut one = LogBatch::default();
    let mut many = LogBatch::default();
    let a = walk_logs(bytes, &keys, &mut one);
    let b = walk_logs_pieces(&parts, junk, &mut joined, &keys, &mut many);
    assert_eq!(a, b, "logs, cut at {cuts:?}");
    if a.is_ok() {
        assert_same(&many, &one);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn requests_in_pieces_walk_as_in_one(
        req in trace_request(),
        logs in log_request(),
        seed in 1u64..,
        junk in 0usize..6,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        damage in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        for mut bytes in [traces_bytes(&req, &mut Mangler(seed)), logs_bytes(&logs, &mut Mangler(seed))] {
            // Sometimes a byte is changed, so that errors are compared too.
            if let Some((at, byte)) = damage && !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            assert_pieces_walk_as_one(&bytes, junk, &cuts);
        }
    }

    #[test]
    fn arbitrary_bytes_in_pieces_walk_as_in_one(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        junk in 0usize..6,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        assert_pieces_walk_as_one(&bytes, junk, &cuts);
    }

    #[test]
    fn trace_walker_matches_prost(req in trace_request(), seed in 1u64..) {
        let bytes = traces_bytes(&req, &mut Mangler(seed));
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).expect("prost decodes what we wrote");
        let keys = keys();
        let mut walked = TraceBatch::default();
        walk_traces(&bytes, &keys, &mut walked).expect("walker accepts what prost accepts");
        let mut reference = TraceBatch::default();
        fill_traces(&decoded, &keys, &mut reference);
        assert_same(&walked, &reference);
        // prost's own encoding of the generated request walks the same way.
        let plain = req.encode_to_vec();
        let mut again = TraceBatch::default();
        walk_traces(&plain, &keys, &mut again).unwrap();
        let mut direct = TraceBatch::default();
        fill_traces(&req, &keys, &mut direct);
        assert_same(&again, &direct);
    }

    #[test]
    fn log_walker_matches_prost(req in log_request(), seed in 1u64..) {
        let bytes = logs_bytes(&req, &mut Mangler(seed));
        let decoded = ExportLogsServiceRequest::decode(&bytes[..]).expect("prost decodes what we wrote");
        let keys = keys();
        let mut walked = LogBatch::default();
        walk_logs(&bytes, &keys, &mut walked).expect("walker accepts what prost accepts");
        let mut reference = LogBatch::default();
        fill_logs(&decoded, &keys, &mut reference);
        assert_same(&walked, &reference);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let keys = keys();
        let mut t = TraceBatch::default();
        let _ = walk_traces(&bytes, &keys, &mut t);
        let mut l = LogBatch::default();
        let _ = walk_logs(&bytes, &keys, &mut l);
    }

    #[test]
    fn truncated_requests_are_errors_or_prefixes(req in trace_request(), cut in any::<prop::sample::Index>()) {
        let bytes = req.encode_to_vec();
        prop_assume!(!bytes.is_empty());
        let cut = cut.index(bytes.len());
        let keys = keys();
        let mut t = TraceBatch::default();
        // A cut either lands on a message boundary (a valid shorter request) or errors;
        // it must agree with prost either way.
        let walked = walk_traces(&bytes[..cut], &keys, &mut t);
        let prost = ExportTraceServiceRequest::decode(&bytes[..cut]);
        prop_assert_eq!(walked.is_ok(), prost.is_ok());
    }
}

/// A `KeyValue` whose `value` field repeats: protobuf merges the two messages, so a
/// trailing empty `AnyValue` keeps the string, and a later string replaces it.
#[test]
fn a_repeated_attribute_value_merges_as_in_prost() {
    let kv = |values: Vec<Payload>| {
        let mut fields = vec![(1, s("service.name"))];
        fields.extend(values.into_iter().map(|v| (2, v)));
        Payload::Msg(fields)
    };
    let cases = [
        (
            vec![Payload::Msg(vec![(1, s("a"))]), Payload::Msg(vec![])],
            "a",
        ),
        (
            vec![
                Payload::Msg(vec![(1, s("a"))]),
                Payload::Msg(vec![(1, s("b"))]),
            ],
            "b",
        ),
        (
            vec![Payload::Msg(vec![]), Payload::Msg(vec![(1, s("c"))])],
            "c",
        ),
    ];
    for (values, want) in cases {
        let resource = Payload::Msg(vec![(1, kv(values))]);
        let span = Payload::Msg(vec![(7, Payload::Fixed64(1)), (8, Payload::Fixed64(2))]);
        let rs = vec![(1, resource), (2, Payload::Msg(vec![(2, span)]))];
        let mut bytes = Vec::new();
        encode(&[(1, Payload::Msg(rs))], &mut bytes);
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let attrs = &decoded.resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(
            attrs[0].value.as_ref().and_then(|v| v.value.clone()),
            Some(any_value::Value::StringValue(want.into())),
            "prost"
        );
        let keys = keys();
        let mut batch = TraceBatch::default();
        walk_traces(&bytes, &keys, &mut batch).unwrap();
        let run = batch.resources[0].clone();
        assert_eq!(
            batch.resource_attrs(&run)[0],
            Value::Str(want.as_bytes()),
            "walker"
        );
    }
}

#[test]
fn resource_after_its_scopes_still_applies() {
    let mut m = Mangler(7);
    let kv = KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue("checkout".into())),
        }),
        ..Default::default()
    };
    let sp = Span {
        name: "x".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        ..Default::default()
    };
    let rs = vec![
        (
            2,
            Payload::Msg(vec![(2, Payload::Msg(span_fields(&sp, &mut m)))]),
        ),
        (
            1,
            Payload::Msg(vec![(
                1,
                Payload::Msg(vec![
                    (1, s("service.name")),
                    (2, Payload::Msg(vec![(1, s("checkout"))])),
                ]),
            )]),
        ),
    ];
    let _ = kv;
    let mut bytes = Vec::new();
    encode(&[(1, Payload::Msg(rs))], &mut bytes);
    let keys = keys();
    let mut batch = TraceBatch::default();
    walk_traces(&bytes, &keys, &mut batch).unwrap();
    assert_eq!(batch.events.len(), 1);
    let run = batch.resources[0].clone();
    assert_eq!(batch.resource_attrs(&run)[0], Value::Str(b"checkout"));
}

#[test]
fn invalid_utf8_is_kept_for_repair_where_prost_refuses() {
    let bad = vec![b'c', 0xff, 0xfe, b'x'];
    let fields = vec![(
        1,
        Payload::Msg(vec![
            (
                1,
                Payload::Msg(vec![(
                    1,
                    Payload::Msg(vec![
                        (1, s("service.name")),
                        (2, Payload::Msg(vec![(1, Payload::Bytes(bad.clone()))])),
                    ]),
                )]),
            ),
            (
                2,
                Payload::Msg(vec![(
                    2,
                    Payload::Msg(vec![
                        (5, Payload::Bytes(vec![0xc3, 0x28])),
                        (7, Payload::Fixed64(1)),
                        (8, Payload::Fixed64(2)),
                    ]),
                )]),
            ),
        ]),
    )];
    let mut bytes = Vec::new();
    encode(&fields, &mut bytes);
    assert!(
        ExportTraceServiceRequest::decode(&bytes[..]).is_err(),
        "prost refuses invalid UTF-8"
    );
    let keys = keys();
    let mut batch = TraceBatch::default();
    walk_traces(&bytes, &keys, &mut batch).expect("the walker keeps going");
    let run = batch.resources[0].clone();
    assert_eq!(batch.resource_attrs(&run)[0], Value::Str(&bad));
    assert_eq!(batch.events[0].name, &[0xc3, 0x28]);
    // The repair that labels get: U+FFFD for each bad sequence.
    assert_eq!(String::from_utf8_lossy(&bad), "c\u{fffd}\u{fffd}x");
}

#[test]
fn invalid_times_are_rejected_and_the_rest_kept() {
    let mk = |start, end| Span {
        name: "s".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                spans: vec![mk(1, 2), mk(0, 2), mk(3, 2), mk(5, 0), mk(4, 4)],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    let bytes = req.encode_to_vec();
    let mut batch = TraceBatch::default();
    walk_traces(&bytes, &keys(), &mut batch).unwrap();
    assert_eq!(batch.events.len(), 2);
    assert_eq!(batch.rejected, 3);
    assert_eq!(
        batch.values.len(),
        2 * keys().len() + keys().len(),
        "rejected rows are dropped"
    );
}

#[test]
fn wrong_wire_type_for_a_known_field_is_an_error() {
    // Span.start_time_unix_nano (7), and Span.trace_id (1), which the walker reads for
    // exemplars, each sent as a varint.
    for field in [7, 1] {
        let fields = vec![(
            1,
            Payload::Msg(vec![(
                2,
                Payload::Msg(vec![(2, Payload::Msg(vec![(field, Payload::Varint(5))]))]),
            )]),
        )];
        let mut bytes = Vec::new();
        encode(&fields, &mut bytes);
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err());
        assert!(walk_traces(&bytes, &keys(), &mut TraceBatch::default()).is_err());
    }
}

/// The ids with a tag longer than a byte (`8a 00`, `92 00`: what a decoder reads as
/// fields 1 and 2), and fields repeated after the blocks SDKs write (the ids, then kind,
/// start and end), walk as prost decodes them: the ids are kept, and a later field wins.
#[test]
fn long_id_tags_and_fields_after_the_blocks_walk_as_in_prost() {
    let fixed64 = |tag: u8, v: u64| {
        let mut f = vec![tag];
        f.extend_from_slice(&v.to_le_bytes());
        f
    };
    let id = |tag: &[u8], byte: u8, len: u8| {
        let mut f = tag.to_vec();
        f.push(len);
        f.extend(std::iter::repeat_n(byte, usize::from(len)));
        f
    };
    // Span A: both ids behind two-byte tags, then kind, start and end. After a tag the
    // blocks and the in-order steps do not expect, the loop reads every field.
    let mut a = [id(&[0x8a, 0x00], 7, 16), id(&[0x92, 0x00], 9, 8)].concat();
    a.extend([0x30, 2]);
    a.extend(fixed64(0x39, 100));
    a.extend(fixed64(0x41, 200));
    // Span B: both blocks, then every field of them again, with other values.
    let mut b = [id(&[0x0a], 1, 16), id(&[0x12], 2, 8)].concat();
    b.extend([0x30, 2]);
    b.extend(fixed64(0x39, 100));
    b.extend(fixed64(0x41, 200));
    b.extend([id(&[0x0a], 3, 16), id(&[0x12], 4, 8)].concat());
    b.extend([0x30, 3]);
    b.extend(fixed64(0x39, 150));
    b.extend(fixed64(0x41, 250));
    // One resource, one scope, the two spans.
    let request = vec![(
        1,
        Payload::Msg(vec![(
            2,
            Payload::Msg(vec![(2, Payload::Bytes(a)), (2, Payload::Bytes(b))]),
        )]),
    )];
    let mut bytes = Vec::new();
    encode(&request, &mut bytes);

    let decoded = ExportTraceServiceRequest::decode(&bytes[..]).expect("prost decodes it");
    let keys = keys();
    let mut walked = TraceBatch::default();
    walk_traces(&bytes, &keys, &mut walked).expect("the walker takes what prost takes");
    let mut reference = TraceBatch::default();
    fill_traces(&decoded, &keys, &mut reference);
    assert_same(&walked, &reference);
    let [a, b] = &walked.events[..] else {
        panic!("two spans: {:?}", walked.events);
    };
    assert_eq!(a.trace_id, Some(&[7; 16]));
    assert_eq!(a.span_id, Some(&[9; 8]));
    assert_eq!((a.kind, a.start, a.end), (2, 100, 200));
    assert_eq!(b.trace_id, Some(&[3; 16]));
    assert_eq!(b.span_id, Some(&[4; 8]));
    assert_eq!((b.kind, b.start, b.end), (3, 150, 250));
}
