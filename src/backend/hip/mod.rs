//! HIP backend. The runtime adapter lands with the GPU backend issue; until
//! then this feature builds the same API as the stub and reports that no
//! adapter is implemented yet.

use crate::error::{Error, Result};

pub const COMPILED: bool = true;

/// Number of HIP devices visible to this process.
pub fn device_count() -> Result<usize> {
    Err(Error::BackendUnavailable("the HIP runtime adapter is not implemented yet; use the CPU backend".into()))
}
