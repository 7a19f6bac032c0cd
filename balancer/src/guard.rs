//! What a streamed response body holds until it ends, so [`body`](crate::body) does not
//! depend on [`backends`](crate::backends) or [`upstream`](crate::upstream).

use crate::backends::InFlight;
use crate::upstream::Lease;

/// The backend's in-flight count and the upstream connection of one response. Dropping it
/// releases both, in that order: the count goes down, then the connection goes back to its
/// pool.
pub struct UpstreamGuard {
    // Fields drop in declaration order.
    _in_flight: InFlight,
    _lease: Lease,
}

impl UpstreamGuard {
    pub fn new(in_flight: InFlight, lease: Lease) -> UpstreamGuard {
        UpstreamGuard {
            _in_flight: in_flight,
            _lease: lease,
        }
    }
}
