//! Encode, decode and MAC cost per message kind, on the protocol's own test vectors.
//!
//! `cargo bench -p onecard-benches --bench protocol`. Each vector is measured three ways:
//! `encode` (header + body + MAC into a reused buffer), `decode` (cut the frame, verify
//! its MAC, parse the body), and `roundtrip` (both). Throughput is in frames per second.

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use onecard_protocol::vectors::{self, Message};
use onecard_protocol::{Answer, FrameCodec, Request};
use tokio_util::codec::Decoder;

fn decode(buf: &mut BytesMut, key: Option<&onecard_protocol::MacKey>) -> Message {
    let frame = FrameCodec.decode(buf).expect("valid").expect("whole");
    if let Some(key) = key {
        frame.verify(key).expect("authentic");
    }
    let message_type = frame.header().message_type().expect("known");
    if message_type.is_answer() {
        Message::Answer(Answer::decode(message_type, &frame.body()).expect("parses"))
    } else {
        Message::Request(Request::decode(message_type, &frame.body()).expect("parses"))
    }
}

fn protocol(c: &mut Criterion) {
    for vector in vectors::all() {
        let key = vector.mac_key();
        let bytes = vector.encode();
        let mut group = c.benchmark_group(vector.name);
        group.throughput(Throughput::Elements(1));
        let mut out = BytesMut::with_capacity(bytes.len());
        let body: &dyn onecard_protocol::Body = match &vector.message {
            Message::Request(request) => request,
            Message::Answer(answer) => answer,
        };
        group.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                onecard_protocol::frame::encode(vector.envelope, body, key.as_ref(), &mut out)
                    .expect("fits");
            });
        });
        group.bench_function("decode", |b| {
            b.iter_batched_ref(
                || BytesMut::from(&bytes[..]),
                |buf| decode(buf, key.as_ref()),
                BatchSize::SmallInput,
            );
        });
        group.bench_function("roundtrip", |b| {
            b.iter(|| {
                out.clear();
                onecard_protocol::frame::encode(vector.envelope, body, key.as_ref(), &mut out)
                    .expect("fits");
                decode(&mut out, key.as_ref())
            });
        });
        group.finish();
    }
}

criterion_group!(benches, protocol);
criterion_main!(benches);
