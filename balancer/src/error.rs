//! Errors the proxy answers itself, mapped to HTTP status in one place.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// Retry-After sent with 503 when no backend is available.
pub const NO_BACKEND_RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no backend available")]
    NoBackend,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream failed")]
    UpstreamFailed,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("malformed or incomplete request body")]
    BadRequestBody,
    #[error("the request body was not received in time")]
    RequestBodyTimeout,
    #[error("{0}")]
    Refused(#[from] crate::strict::Refusal),
    #[error("not found")]
    NotFound,
}

impl From<crate::request_body::ClientFault> for ProxyError {
    fn from(f: crate::request_body::ClientFault) -> ProxyError {
        use crate::request_body::ClientFault;
        match f {
            ClientFault::BodyTooLarge => ProxyError::BodyTooLarge,
            ClientFault::BadBody => ProxyError::BadRequestBody,
            ClientFault::BodyTimeout => ProxyError::RequestBodyTimeout,
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Refused(r) => r.status(),
            ProxyError::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// Short machine-readable code used in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoBackend => "no_backend",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::BadRequestBody => "bad_request_body",
            ProxyError::RequestBodyTimeout => "request_body_timeout",
            ProxyError::Refused(r) => r.code(),
            ProxyError::NotFound => "not_found",
        }
    }

    /// `{"error":"<code>","message":"<text>"}` with the right status and headers.
    pub fn response(&self) -> Response<ResponseBody> {
        let body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        let mut resp = json_response(self.status(), &body);
        if matches!(self, ProxyError::NoBackend) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(NO_BACKEND_RETRY_AFTER.as_secs()),
            );
        }
        // The client's message was not read to its end (or is not trusted to be framed
        // right): the connection cannot carry another request.
        if matches!(
            self,
            ProxyError::BodyTooLarge
                | ProxyError::BadRequestBody
                | ProxyError::RequestBodyTimeout
                | ProxyError::Refused(_)
        ) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A JSON response (fields in the order the type declares them).
pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        log::error!("cannot encode a JSON answer: {e}");
        b"{}".to_vec()
    });
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_headers() {
        let r = ProxyError::NoBackend.response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(ProxyError::UpstreamTimeout.response().status(), 504);
        assert_eq!(ProxyError::UpstreamFailed.response().status(), 502);
        assert_eq!(ProxyError::BodyTooLarge.response().status(), 413);
        let r = ProxyError::RequestBodyTimeout.response();
        assert_eq!(r.status(), 408);
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(ProxyError::BadRequestBody.response().status(), 400);
        let r = ProxyError::from(crate::strict::Refusal::Connect).response();
        assert_eq!(r.status(), 501);
    }
}
