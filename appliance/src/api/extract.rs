//! The request extractors the handlers use: axum's `Json`, `Path` and `Query`, whose rejections
//! (a body that is not JSON, a field of the wrong type, a path segment that is not a number)
//! come back as the API's own error body, like every other error, instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

fn rejected(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        _ => "bad_request",
    };
    ApiError::new(status, code, text)
}

/// A JSON request body.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match <axum::Json<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

/// An optional JSON body: none when the request has no JSON content type (an empty POST),
/// refused like `Body` when it has one that cannot be read.
impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        match <axum::Json<T> as OptionalFromRequest<S>>::from_request(req, state).await {
            Ok(v) => Ok(v.map(|axum::Json(v)| Body(v))),
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

/// The path's parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

/// The query string's parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body as HttpBody;
    use axum::http::Request as HttpRequest;
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Req {
        #[allow(dead_code)]
        n: u32,
    }

    async fn call(uri: &str, content_type: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let app = Router::new().route(
            "/x/{id}",
            post(|Path(_): Path<i64>, Body(_): Body<Req>| async { "ok" }),
        );
        let req = HttpRequest::post(uri)
            .header("content-type", content_type)
            .body(HttpBody::from(body.to_string()))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn rejections_are_api_errors() {
        for (uri, ct, body, status, code) in [
            ("/x/1", "application/json", "", 400, "bad_request"),
            ("/x/1", "application/json", "{\"n\": -1}", 422, "invalid"),
            (
                "/x/1",
                "text/plain",
                "{\"n\": 1}",
                415,
                "unsupported_media_type",
            ),
            (
                "/x/one",
                "application/json",
                "{\"n\": 1}",
                400,
                "bad_request",
            ),
        ] {
            let (s, v) = call(uri, ct, body).await;
            assert_eq!(s.as_u16(), status, "{uri} {body}: {v}");
            assert_eq!(v["error"]["code"], code, "{uri} {body}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().len() > 5, "{v}");
        }
        assert_eq!(call("/x/1", "application/json", "{\"n\": 1}").await.0, 200);
    }
}
