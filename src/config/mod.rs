//! Configuration: the typed schema, loading, and validation.
//!
//! Sources, later ones overriding earlier ones:
//! 1. a TOML file (`config/authrelay.toml` by default),
//! 2. environment variables `AUTHRELAY__SECTION__NAME__KEY` (for example
//!    `AUTHRELAY__ACCOUNT__SCANNER__TENANT`); names are lower-cased,
//! 3. for every secret `key`, the variant `key_file` naming a file that holds it.
//!
//! [`load`] reads everything and returns either a [`Config`] or the complete list of problems,
//! each with its key path, so `authrelay check` can show them all at once.

mod account;
mod alerts;
mod choices;
mod delivery;
mod devices;
mod endpoints;
mod listener;
mod load;
mod reader;
mod schema;
mod store;
mod upstream;

pub use reader::Problem;
use reader::{Problems, Table};

use crate::secret::Secret;
use config::{Environment, File, FileFormat, Value};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "config/authrelay.toml";

use account::*;
pub use alerts::AlertsConfig;
pub use delivery::*;
pub use devices::warnings;
pub use endpoints::*;
use listener::*;
pub use listener::{is_loopback_host, split_host_port};
pub use load::{admin_listen, from_toml_str, from_value, load};
pub use schema::*;

#[cfg(test)]
mod tests;
