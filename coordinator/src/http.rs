//! The coordinator's plain HTTP endpoint, for booted clones that only have wget or curl:
//! `POST /v1/clones/register?token=TOKEN` with `{"name", "address", "machine_id"?,
//! "boot_id"?, "kernel"?}` is the HTTP twin of `RegisterClone` (same registry operation).
//! `GET /healthz` answers `ok`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use napalm_proto::v1::RegisterCloneRequest;
use napalm_proto::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::registry::clones::TokenKey;
use crate::registry::Registry;

#[derive(Clone)]
struct AppState {
    registry: Registry,
    tokens: Arc<TokenKey>,
}

/// The query string of a registration.
#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// The body a clone's register hook posts.
#[derive(Deserialize)]
struct RegisterBody {
    name: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    kernel: String,
}

/// The router (mounted at `/`).
pub fn router(registry: Registry, tokens: Arc<TokenKey>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/clones/register", post(register))
        .with_state(AppState { registry, tokens })
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
}

async fn register(
    State(st): State<AppState>,
    Query(q): Query<TokenQuery>,
    body: Result<Json<RegisterBody>, axum::extract::rejection::JsonRejection>,
) -> (StatusCode, Json<Value>) {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("body must be JSON {{\"name\",\"address\"}}: {e}")})),
            )
        }
    };
    let req = RegisterCloneRequest {
        name: body.name,
        token: q.token,
        addresses: if body.address.is_empty() {
            vec![]
        } else {
            vec![body.address]
        },
        boot: None,
        kernel: body.kernel,
        boot_id: body.boot_id,
    };
    match st.registry.register_clone(req, &st.tokens).await {
        Ok(r) => {
            let c = r.clone.unwrap_or_default();
            (
                StatusCode::OK,
                Json(json!({"name": c.name, "addresses": c.addresses})),
            )
        }
        Err(e) => {
            let e = ApiError::from(e);
            let code = match &e {
                ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
                ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
                ApiError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (code, Json(json!({"error": e.to_string()})))
        }
    }
}
