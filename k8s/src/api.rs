//! The kubelet device plugin API v1beta1 (`proto/api.proto`), generated at build time: the
//! messages, the `Registration` and `DevicePlugin` services, clients and servers of both.
//! Nothing else in the crate sees generated naming; lint allows stay here.

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("v1beta1");
}

pub use generated::*;

/// The API version the plugin was built against (`RegisterRequest.version`).
pub const VERSION: &str = "v1beta1";
/// `Device.health` of a unit that can be allocated.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of a unit whose card is failed, resetting, draining or unreachable.
pub const UNHEALTHY: &str = "Unhealthy";
