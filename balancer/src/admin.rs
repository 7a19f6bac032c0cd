//! Admin listener: `GET /health`, `GET /metrics`, `GET /queue`.

use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::ResponseBody;
use crate::error::{json_response, ProxyError};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Answers one admin request. Generic over the body: admin endpoints read none.
pub fn handle<B>(req: &Request<B>, proxy: &Proxy, metrics: &Metrics) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed", "message": "admin endpoints are read-only"}),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/health" => health(proxy, metrics),
        "/metrics" => {
            let mut text = metrics.render(proxy.backends(), proxy.cache());
            if let Some(tasks) = proxy.tasks() {
                tasks.render_metrics(&mut text);
            }
            let mut resp = Response::new(ResponseBody::full(text.into_string()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/queue" => queue(proxy, metrics),
        _ => ProxyError::NotFound.response(),
    }
}

fn health(proxy: &Proxy, metrics: &Metrics) -> Response<ResponseBody> {
    let table = proxy.backends().load();
    let selectable = table.selector.eligible();
    let body = json!({
        "status": if selectable > 0 { "ok" } else { "degraded" },
        "backends": table.backends.len(),
        "selectable": selectable,
        "queue_version": table.version,
        "agent_connected": metrics.agent_connected.load(Ordering::Relaxed),
    });
    json_response(StatusCode::OK, &body)
}

fn queue(proxy: &Proxy, metrics: &Metrics) -> Response<ResponseBody> {
    let set = proxy.backends();
    let table = set.load();
    let backends: Vec<serde_json::Value> = table
        .backends
        .iter()
        .map(|b| {
            json!({
                "id": b.id,
                "name": b.name,
                "address": b.address,
                "score": b.score,
                "category": b.category,
                "weight": b.weight,
                "in_flight": b.stats.in_flight.load(Ordering::Relaxed),
                "requests": b.stats.requests.load(Ordering::Relaxed),
                "errors": b.stats.errors.load(Ordering::Relaxed),
                "ejected": set.is_ejected(b),
            })
        })
        .collect();
    let body = json!({
        "version": table.version,
        "strategy": table.selector.strategy().as_str(),
        "agent_connected": metrics.agent_connected.load(Ordering::Relaxed),
        "backends": backends,
    });
    json_response(StatusCode::OK, &body)
}
