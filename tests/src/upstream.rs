//! The recording upstream of the tests is the vendor sandbox of `keybrake dev`.

pub use keybrake_cli::sandbox::{
    Mode, Moved, Recorded, Sandbox as RecordingUpstream, sms_segments as vendor_sms_segments,
    vendor_form,
};
