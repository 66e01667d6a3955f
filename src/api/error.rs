//! One error type for every handler, rendered in the shape the calling API's clients parse:
//! OpenAI `{"error": {"message", "type", "param", "code"}}`, Ollama `{"error": "..."}`.

use crate::catalog::{Catalog, CatalogError};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use scheduler::telemetry::{self, FailKind};
use scheduler::{FinishReason, SubmitError};
use serde_json::json;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Ollama,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    pub retry_after: Option<Duration>,
    /// OpenAI's machine-readable code, when there is a specific one.
    pub code: Option<&'static str>,
    /// The model the request named, when known (a metrics label).
    pub model: Option<String>,
    /// The scheduler has counted this outcome already (it failed or was cancelled there), so
    /// refusing it must not count it again.
    pub counted: bool,
    /// The kind the scheduler gave the failure, for the count where the scheduler left it
    /// to the caller; otherwise the kind follows from the status.
    pub kind: Option<FailKind>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
            code: None,
            model: None,
            counted: false,
            kind: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }

    /// The client closed its connection before the reply (nginx's 499): nobody reads this
    /// response, but the request is counted as cancelled.
    pub fn client_gone() -> Self {
        // The scheduler counts the cancellation when the request's stream is dropped.
        ApiError {
            counted: true,
            ..Self::new(
                StatusCode::from_u16(499).expect("499 is a valid status"),
                "the client closed the connection",
            )
        }
    }

    /// A generation that ended in failure, with the status its kind calls for: the
    /// client's fault (400), the server's load or state (503 with Retry-After), or the
    /// runtime's failure (500). The scheduler has counted it.
    pub fn from_finish(reason: &FinishReason) -> Self {
        let FinishReason::Error(f) = reason else {
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the generation ended without an error",
            );
        };
        let retry = |e: ApiError| ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..e
        };
        let e = match f.kind {
            FailKind::BadRequest => Self::bad_request(f.message.clone()),
            FailKind::Overloaded => {
                retry(Self::new(StatusCode::TOO_MANY_REQUESTS, f.message.clone()))
            }
            FailKind::Timeout | FailKind::Unavailable => retry(Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                f.message.clone(),
            )),
            FailKind::Cancelled => Self::client_gone(),
            FailKind::RuntimeError => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, f.message.clone())
            }
        };
        ApiError {
            counted: true,
            kind: Some(f.kind),
            ..e
        }
    }

    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 408 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable_error",
            _ => "server_error",
        }
    }

    fn openai_code(&self) -> Option<&'static str> {
        if self.code.is_some() {
            return self.code;
        }
        match self.status.as_u16() {
            401 => Some("invalid_api_key"),
            413 => Some("request_too_large"),
            429 => Some("rate_limit_exceeded"),
            _ => None,
        }
    }

    pub fn body(&self, api: Api) -> serde_json::Value {
        match api {
            Api::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.openai_code(),
            }}),
            Api::Ollama => json!({"error": self.message}),
        }
    }

    pub fn response(&self, api: Api) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(d) = self.retry_after {
            r.insert_header(("Retry-After", d.as_secs().max(1).to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.insert_header(("WWW-Authenticate", "Bearer"));
        }
        r.json(self.body(api))
    }

    /// The response to a generation request refused before it reached the scheduler,
    /// counted in `rkserve_request_failure_total` by kind.
    /// `named` is the model the request named, if it got that far: a model the catalog knows
    /// labels the count; any other name does not, so clients cannot create series at will.
    pub fn refuse(&self, api: Api, catalog: &Catalog, named: Option<&str>) -> HttpResponse {
        let kind = self.kind.unwrap_or(match self.status.as_u16() {
            429 => FailKind::Overloaded,
            499 => FailKind::Cancelled,
            503 => FailKind::Unavailable,
            400..=499 => FailKind::BadRequest,
            _ => FailKind::RuntimeError,
        });
        if !self.counted {
            let model = self
                .model
                .clone()
                .or_else(|| named.and_then(|n| catalog.known_name(n)))
                .unwrap_or_default();
            telemetry::count_failure(&model, kind, 1);
        }
        self.response(api)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        let model = match &e {
            SubmitError::UnknownModel(m)
            | SubmitError::ModelUnavailable { model: m, .. }
            | SubmitError::PromptTooLong { model: m, .. }
            | SubmitError::Overloaded { model: m, .. } => Some(m.clone()),
            SubmitError::ShuttingDown => None,
        };
        let e = match e {
            SubmitError::UnknownModel(_) => ApiError {
                code: Some("model_not_found"),
                ..ApiError::new(StatusCode::NOT_FOUND, message)
            },
            SubmitError::PromptTooLong { .. } => ApiError::bad_param("messages", message),
            SubmitError::Overloaded { retry_after, .. } => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
            },
            // Another board, or this one a moment later, may serve it: routers and SDKs
            // retry a 503 that says when.
            SubmitError::ModelUnavailable { .. } | SubmitError::ShuttingDown => ApiError {
                retry_after: Some(Duration::from_secs(1)),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
            },
        };
        ApiError { model, ..e }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let message = e.to_string();
        match e {
            CatalogError::NotFound(_) => ApiError {
                param: Some("model".into()),
                code: Some("model_not_found"),
                ..ApiError::new(StatusCode::NOT_FOUND, message)
            },
            CatalogError::Invalid { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
            CatalogError::InsufficientMemory { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, message)
            }
        }
    }
}
