//! Content detectors (placeholder; filled in by the masking work).
