//! The `sql-apps` plugin: app managers over SQL databases, reading and writing the reference's
//! `applications` table unchanged, so a server can be pointed at the incumbent's database; and
//! the `postgres` history store (long retention, on the same connection settings).
//!
//! - `mysql` (MySQL and MariaDB): a small pool (`mysql_async`); rows converted by the column
//!   types read at start, written with one placeholder per column the table has.
//! - `postgres` (the host also accepts the reference's `pgsql` and `postgresql`): one
//!   pipelined connection (`tokio-postgres`), reopened when it breaks. Rows are read with
//!   `row_to_json`, so every column crosses as the JSON the host checks, and written through
//!   `json_populate_record` for the columns the table has, so a table with more or fewer of
//!   the reference's columns works as it is.
// `#[export_root_module]` expands to an exported static, which the unsafe_code lint reports.
#![allow(unsafe_code)]

mod config;
mod history;
mod mysql;
mod pg;
mod postgres;
mod record;

pub use history::PostgresHistory;
pub use mysql::MysqlApps;
pub use postgres::PostgresApps;

use sockhost_plugin_api::sdk;

sockhost_plugin_api::export_plugin! {
    name: "sql-apps",
    app_manager: ["postgres", "mysql"] => |args| async move {
        let config = config::SqlConfig::parse("app_manager", &args.driver, &args.config)?;
        if args.driver == "mysql" {
            let manager = MysqlApps::connect(config).await?;
            Ok(sdk::app_manager_box(args.runtime, manager))
        } else {
            let manager = PostgresApps::connect(config).await?;
            Ok(sdk::app_manager_box(args.runtime, manager))
        }
    },
    history: ["postgres"] => |args| async move {
        let config = config::SqlConfig::parse("history", &args.driver, &args.config)?;
        Ok(sdk::history_box(args.runtime, PostgresHistory::connect(config).await?))
    },
}
