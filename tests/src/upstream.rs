//! The recording upstream of the tests is the vendor sandbox of `keybrake dev`.

pub use keybrake_cli::sandbox::{Mode, Moved, Recorded, Sandbox as RecordingUpstream, vendor_form};
