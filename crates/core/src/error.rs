//! API errors in Cloud Foundry's shape: `{code, description, error_code}` plus an HTTP status.

use serde::{Deserialize, Serialize};

/// An error as the controller returns it, and as the client reads it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{description} ({error_code})")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: u32,
    pub description: String,
    pub error_code: String,
}

impl ApiError {
    pub fn new(status: u16, code: u32, error_code: &str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            description: description.into(),
            error_code: error_code.to_string(),
        }
    }

    pub fn invalid_request(msg: impl Into<String>) -> Self {
        Self::new(400, 10001, "CF-InvalidRequest", msg)
    }
    pub fn message_parse(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            1001,
            "CF-MessageParseError",
            format!("Request invalid due to parse error: {}", msg.into()),
        )
    }
    pub fn not_authenticated() -> Self {
        Self::new(401, 1000, "CF-InvalidAuthToken", "Invalid Auth Token: it is malformed, expired or revoked; log in again with `strato login`")
    }
    pub fn not_authorized() -> Self {
        Self::new(
            403,
            10003,
            "CF-NotAuthorized",
            "You are not authorized to perform the requested action",
        )
    }
    pub fn not_found(kind: &str, guid: &str) -> Self {
        let (code, ec) = match kind {
            "app" => (100004, "CF-AppNotFound"),
            "organization" => (30003, "CF-OrganizationNotFound"),
            "space" => (40004, "CF-SpaceNotFound"),
            "route" => (210002, "CF-RouteNotFound"),
            "domain" => (130002, "CF-DomainNotFound"),
            "user" => (20003, "CF-UserNotFound"),
            "service" => (120003, "CF-ServiceNotFound"),
            "service plan" => (110003, "CF-ServicePlanNotFound"),
            "service instance" => (60004, "CF-ServiceInstanceNotFound"),
            "service binding" => (90004, "CF-ServiceBindingNotFound"),
            _ => (10000, "CF-NotFound"),
        };
        Self::new(
            404,
            code,
            ec,
            format!("The {kind} could not be found: {guid}"),
        )
    }
    pub fn service_instance_name_taken(name: &str) -> Self {
        Self::new(
            400,
            60002,
            "CF-ServiceInstanceNameTaken",
            format!("The service instance name is taken: {name}"),
        )
    }
    pub fn service_instance_invalid(msg: impl Into<String>) -> Self {
        Self::new(400, 60003, "CF-ServiceInstanceInvalid", msg)
    }
    pub fn binding_taken(app: &str, service: &str) -> Self {
        Self::new(
            400,
            90003,
            "CF-ServiceBindingAppServiceTaken",
            format!("The app {app} is already bound to the service {service}"),
        )
    }
    /// Something else still refers to the thing being deleted.
    pub fn association_not_empty(msg: impl Into<String>) -> Self {
        Self::new(400, 10006, "CF-AssociationNotEmpty", msg)
    }
    /// A service broker refused or failed; `msg` is its reason.
    pub fn service_broker(msg: impl Into<String>) -> Self {
        Self::new(502, 10001, "CF-ServiceBrokerBadResponse", msg)
    }
    pub fn app_name_taken(name: &str) -> Self {
        Self::new(
            400,
            100002,
            "CF-AppNameTaken",
            format!("The app name is taken: {name}"),
        )
    }
    pub fn app_invalid(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            100001,
            "CF-AppInvalid",
            format!("The app is invalid: {}", msg.into()),
        )
    }
    pub fn route_host_taken(host: &str) -> Self {
        Self::new(
            400,
            210003,
            "CF-RouteHostTaken",
            format!("The host is taken: {host}"),
        )
    }
    pub fn route_invalid(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            210001,
            "CF-RouteInvalid",
            format!("The route is invalid: {}", msg.into()),
        )
    }
    pub fn staging_in_progress() -> Self {
        Self::new(400, 170002, "CF-NotStaged", "App has not finished staging")
    }
    pub fn staging_error(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            170001,
            "CF-StagingError",
            format!("Staging error: {}", msg.into()),
        )
    }
    pub fn no_app_detected(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            170003,
            "CF-NoAppDetectedError",
            format!(
                "An app was not successfully detected by any available buildpack: {}",
                msg.into()
            ),
        )
    }
    pub fn app_bits_upload_invalid(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            160001,
            "CF-AppBitsUploadInvalid",
            format!("The app upload is invalid: {}", msg.into()),
        )
    }
    pub fn upload_too_large(limit_mb: u64) -> Self {
        Self::new(413, 1, "CF-RequestTooLarge", format!("The upload is larger than the limit of {limit_mb} MB; make it smaller (add an ignores: list to stackato.yml) or ask the operator to raise it with `kato op max_client_upload MB`"))
    }
    pub fn instances_error(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            220001,
            "CF-InstancesError",
            format!("Instances error: {}", msg.into()),
        )
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(503, 10015, "CF-ServiceUnavailable", msg)
    }
    pub fn server(msg: impl Into<String>) -> Self {
        Self::new(
            500,
            10001,
            "UnknownError",
            format!("An unknown error occurred: {}", msg.into()),
        )
    }
}
