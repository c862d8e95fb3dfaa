//! Manifest reading: seed format and HyperSDK Artifact Manifest v1.0, JSON or YAML → [`crate::plan::Plan`].
