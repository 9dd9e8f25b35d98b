//! A bearer's agents spread over a few shared WASI 0.3 instances:
//! [`Shards`].
//!
//! A [`SharedCredential`] runs every call in one store, on one thread at a
//! time. At a thousand agents asking at once, that thread is the limit: its
//! cached wave took about twice as long as the same agents in instances of
//! their own (`docs/performance.md`). `Shards` builds a few shared instances
//! from one [`SandboxBuilder`] and hands each agent the one fewest agents
//! hold, so the calls of a wave run on as many threads as there are shards.
//! One shard per core is the usual choice.
//!
//! What it costs: each shard is a shared credential of its own, with its own
//! cache and mints, so a bearer's first call for an audience mints once per
//! shard rather than once, and each shard has an instance's fixed memory.
//!
//! Threat model: as for a [`SharedCredential`], whose guarantees each shard
//! keeps. An agent holds one shard: it reaches only what the builder
//! granted, and is charged for the requests its own shard sent for its
//! audience (each shard counts its own), never for another shard's.
//!
//! ```no_run
//! # async fn demo(broker_url: String) -> anyhow::Result<()> {
//! use vd_cred_host::Host;
//! use vd_cred_host::linked::{AgentPolicy, LinkedCredential};
//! let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
//! let shards = Host::shared_p3()
//!     .sandbox()
//!     .env("VD_CREDENTIAL_BROKER_URL", &broker_url)
//!     .env("VD_CREDENTIAL_FILE", "/run/vd/credential")
//!     .bearer_dir("/run/vd", "/run/vd")
//!     .broker_url(&broker_url)
//!     .build_shards(cores)
//!     .await?;
//! // Each agent's credential forwards to the shard it was assigned.
//! let linked = LinkedCredential::shared(shards.assign(), AgentPolicy::new("agent-1"));
//! # let _ = linked; Ok(()) }
//! ```

use std::sync::Arc;

use anyhow::Result;

use crate::sandboxes::sandbox::SandboxBuilder;
use crate::sandboxes::shared::SharedCredential;

/// The most shards one builder makes: more instances than any machine has
/// cores for, and each holds an instance's memory.
pub const MAX_SHARDS: usize = 64;

/// A few [`SharedCredential`]s of one bearer, built alike; clones share
/// them.
#[derive(Clone)]
pub struct Shards {
    shards: Arc<[SharedCredential]>,
}

impl SandboxBuilder<'_> {
    /// `shards` instances of the WASI 0.3 build, each a
    /// [`SharedCredential`] set up as [`SandboxBuilder::build_shared`] sets
    /// one up, with counts and output of its own. Fails for the 0.2 build,
    /// and for no shards or more than [`MAX_SHARDS`].
    pub async fn build_shards(self, shards: usize) -> Result<Shards> {
        anyhow::ensure!(
            (1..=MAX_SHARDS).contains(&shards),
            "{shards} shards asked for: build between 1 and {MAX_SHARDS} (one per core is the \
             usual choice)"
        );
        let (recipe, call_limit) = self.into_parts();
        let mut built = Vec::with_capacity(shards);
        for _ in 1..shards {
            built.push(SharedCredential::start(recipe.twin(), call_limit).await?);
        }
        built.push(SharedCredential::start(recipe, call_limit).await?);
        Ok(Shards {
            shards: built.into(),
        })
    }
}

impl Shards {
    /// The shard for a new agent: the one the fewest agents hold (clones of
    /// its [`SharedCredential`] still alive), the first of them on a tie.
    /// Agents that go give their place back.
    pub fn assign(&self) -> SharedCredential {
        let fewest = self
            .shards
            .iter()
            .min_by_key(|shard| shard.holders())
            .expect("build_shards makes at least one shard");
        fewest.clone()
    }

    /// Every shard, in the order they were built.
    pub fn shards(&self) -> &[SharedCredential] {
        &self.shards
    }
}
