//! Patch semantics of the Kubernetes API: JSON Patch, JSON merge patch, strategic merge patch,
//! and server-side apply's field ownership.
//!
//! Everything here is pure: values in, values out. Schema knowledge (merge keys, list types)
//! comes through [`PatchSchema`], usually an [`OpenApiSchema`] over the OpenAPI document the
//! server publishes, so the server and its clients agree on how each field is patched.

pub mod apply;
mod error;
mod json;
mod schema;
mod strategic;
#[cfg(test)]
mod testdoc;

pub use error::PatchError;
pub use json::{json_merge_patch, json_patch};
pub use schema::{NoSchema, OpenApiSchema, PatchSchema};
pub use strategic::strategic_merge_patch;
