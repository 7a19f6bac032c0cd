//! Faithful forwarding: what the client sends is what the origin gets, and back.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use protocol::Category;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// FNV-1a over the body, to compare large bodies cheaply.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m = serde_json::Map::new();
    for k in h.keys() {
        let vals: Vec<Value> = h
            .get_all(k)
            .iter()
            .map(|v| json!(v.to_str().unwrap_or("?")))
            .collect();
        m.insert(k.as_str().to_string(), Value::Array(vals));
    }
    Value::Object(m)
}

/// An origin that answers with a JSON description of the request it got.
async fn echo_origin() -> Origin {
    Origin::start(handler(|req| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let desc = json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
            "headers": headers_json(&parts.headers),
            "len": body.len(),
            "fnv": fnv(&body),
        });
        text(200, desc.to_string())
    }))
    .await
}

#[tokio::test]
async fn method_path_query_and_headers_arrive_intact() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let req = Request::put(b.url("/api/items/42?a=1&b=two%20words&a=3"))
        .header("x-custom", "value one")
        .header("x-multi", "first")
        .header("x-multi", "second")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"k\":1}")))
        .unwrap();
    let (resp, body) = send(&client(), req).await;
    assert_eq!(resp.status(), 200);
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["method"], "PUT");
    assert_eq!(got["uri"], "/api/items/42?a=1&b=two%20words&a=3");
    let h = &got["headers"];
    assert_eq!(h["x-custom"], json!(["value one"]));
    assert_eq!(h["x-multi"], json!(["first", "second"]));
    assert_eq!(h["content-type"], json!(["application/json"]));
    assert_eq!(got["len"], 7);
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["host"], json!([b.addr.to_string()]), "Host is preserved");
    assert_eq!(h["x-forwarded-for"], json!(["203.0.113.7, 127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], json!(["http"]));
    assert_eq!(h["x-forwarded-host"], json!([b.addr.to_string()]));
}

#[tokio::test]
async fn response_headers_and_status_come_back() {
    let origin = Origin::start(handler(|_| async {
        let mut r = text(201, "created");
        r.headers_mut().insert("x-origin", "yes".parse().unwrap());
        r.headers_mut()
            .insert("connection", "x-private".parse().unwrap());
        r.headers_mut().insert("x-private", "hop".parse().unwrap());
        r.headers_mut().append("set-cookie", "a=1".parse().unwrap());
        r.headers_mut().append("set-cookie", "b=2".parse().unwrap());
        r
    }))
    .await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (resp, body) = get(&b.url("/x")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(&body[..], b"created");
    assert_eq!(resp.headers()["x-origin"], "yes");
    assert!(resp.headers().get("x-private").is_none());
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 2);
}

#[tokio::test]
async fn multi_megabyte_post_streams_through() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[("MAX_BODY_BYTES", "32MiB")]).await;
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let req = Request::post(b.url("/upload"))
        .body(Full::new(Bytes::from(data.clone())))
        .unwrap();
    let (resp, body) = send(&client(), req).await;
    assert_eq!(resp.status(), 200);
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["len"], data.len());
    assert_eq!(got["fnv"], fnv(&data));
}

#[tokio::test]
async fn request_body_is_streamed_not_buffered() {
    // The origin reports its first chunk before the client has sent the rest: a proxy
    // that buffered the whole body would deadlock here. The first chunk is larger than
    // BUFFER_BODY_BYTES (64 KiB by default): what was read while trying to buffer the body
    // is sent first, then the rest streams.
    let (first_tx, mut first_rx) = mpsc::channel::<usize>(1);
    let origin = Origin::start(handler(move |req| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            let mut told = false;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    total += d.len();
                    if !told {
                        let _ = first_tx.send(d.len()).await;
                        told = true;
                    }
                }
            }
            text(200, total.to_string())
        }
    }))
    .await;
    let b = Balancer::over(&[&origin], &[]).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post(b.url("/stream")).body(body).unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let pending = tokio::spawn(async move { c.request(req).await });
    tx.send(Ok(Frame::data(Bytes::from(vec![1u8; 100_000]))))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), first_rx.recv())
        .await
        .expect("origin never saw the first chunk while the client was still sending");
    assert!(first.unwrap() > 0);
    tx.send(Ok(Frame::data(Bytes::from(vec![2u8; 500]))))
        .await
        .unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"100500");
}

/// A `Stream` over an mpsc receiver (no tokio-stream dependency).
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn response_body_is_streamed_with_trailers() {
    let (go_tx, go_rx) = mpsc::channel::<()>(1);
    let go_rx = std::sync::Arc::new(tokio::sync::Mutex::new(go_rx));
    let origin_addr = {
        // This origin needs a streaming body type, so it is served by hand.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let go_rx = go_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let go_rx = go_rx.clone();
                        async move {
                            let (tx, rx) =
                                mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
                            tokio::spawn(async move {
                                let _ = tx
                                    .send(Ok(Frame::data(Bytes::from_static(b"part one;"))))
                                    .await;
                                go_rx.lock().await.recv().await;
                                let _ = tx
                                    .send(Ok(Frame::data(Bytes::from_static(b"part two"))))
                                    .await;
                                let mut trailers = HeaderMap::new();
                                trailers.insert("x-checksum", "abc123".parse().unwrap());
                                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                            });
                            let mut resp =
                                http::Response::new(StreamBody::new(tokio_stream_from(rx)));
                            resp.headers_mut()
                                .insert("trailer", "x-checksum".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    };
    let list = origin_addr.to_string();
    let b = Balancer::start(&[("STATIC_BACKENDS", list.as_str())]).await;
    let req = Request::get(b.url("/stream"))
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk did not arrive before the origin finished")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part one;"));
    go_tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap();
    let trailers = rest.trailers().cloned();
    assert_eq!(rest.to_bytes(), Bytes::from_static(b"part two"));
    assert_eq!(
        trailers.expect("trailers were dropped")["x-checksum"],
        "abc123"
    );
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let origin = echo_origin().await;
    let b = Balancer::over(&[&origin], &[]).await;
    let req = Request::get(b.url("/h2?x=1"))
        .header("x-via", "h2")
        .body(Full::default())
        .unwrap();
    let (resp, body) = send(&h2_client(), req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let got: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(got["uri"], "/h2?x=1");
    assert_eq!(got["version"], "HTTP/1.1", "upstream is HTTP/1.1");
    assert_eq!(got["headers"]["x-via"], json!(["h2"]));
    assert_eq!(
        got["headers"]["host"],
        json!([b.addr.to_string()]),
        "authority becomes Host"
    );
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text()
                        && ws
                            .send(WsMessage::Text(
                                format!("echo: {}", m.to_text().unwrap()).into(),
                            ))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let list = origin_addr.to_string();
    // A short head timeout: an open tunnel is not waiting for a request head.
    let b = Balancer::start(&[
        ("STATIC_BACKENDS", list.as_str()),
        ("HEADER_READ_TIMEOUT", "300ms"),
    ])
    .await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/socket", b.addr))
        .await
        .expect("upgrade through the balancer failed");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        if i == 2 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        ws.send(WsMessage::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo: hello {i}"));
    }
    let q = b.queue().await;
    assert_eq!(
        q["backends"][0]["in_flight"], 1,
        "an open tunnel counts as in flight"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.queue().await["backends"][0]["in_flight"] == 0
        })
        .await,
        "tunnel not released"
    );
}

#[tokio::test]
async fn traffic_follows_the_weights_of_the_queue() {
    let (heavy, light) = (Origin::named("heavy").await, Origin::named("light").await);
    let agent = Agent::start(None).await;
    let url = agent.url();
    let b = Balancer::start(&[("DEPLOYMENT_AGENT_URL", url.as_str())]).await;
    agent.send(queue_frame(
        1,
        vec![
            item("h", heavy.addr, 90.0, Category::Low),
            item("l", light.addr, 10.0, Category::High),
        ],
    ));
    b.wait_version(1).await;
    let c = client();
    for _ in 0..2000 {
        let (resp, _) = send(&c, Request::get(b.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(resp.status(), 200);
    }
    let share = heavy.hits() as f64 / 2000.0;
    assert!(
        (0.86..0.94).contains(&share),
        "heavy got {share} of the traffic, expected 0.9"
    );
}
