//! What a store is asked to be: sync mode, merge rule and optimiser settings,
//! validated once with errors that name the value and what is allowed.

use crate::error::{Result, StoreError};

/// Most payload slots per worker queue (the header reserves a weight for each).
pub const MAX_SLOTS: usize = 8;

/// Floats per chunk of a merge (1 MiB): small enough that threads balance the load
/// when one is descheduled, large enough that claiming a chunk costs nothing.
pub const CHUNK_FLOATS: usize = 1 << 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bulk synchronous: a round completes when every worker has pushed.
    Bsp = 0,
    /// Asynchronous: each push is applied on arrival.
    Asp = 1,
    /// Stale synchronous: like ASP, but a worker may run at most `staleness` rounds
    /// ahead of the slowest.
    Ssp = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Weighted mean of the round's weights: `sum f_i w_i / sum f_i` (BSP).
    Average = 0,
    /// The paper's asynchronous rule: `w <- (w + f w_i) / (1 + f)`.
    Blend = 1,
    /// The payload is a gradient; the server takes an SGD step (momentum, Nesterov,
    /// weight decay) with the gradient scaled by the weight.
    Sgd = 2,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Mode> {
        match text {
            "bsp" => Ok(Mode::Bsp),
            "asp" => Ok(Mode::Asp),
            "ssp" => Ok(Mode::Ssp),
            other => Err(StoreError::invalid(format!(
                "unknown mode {other:?}: use 'bsp', 'asp' or 'ssp'"
            ))),
        }
    }

    pub fn from_u32(code: u32) -> Option<Mode> {
        [Mode::Bsp, Mode::Asp, Mode::Ssp].into_iter().find(|m| *m as u32 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bsp => "bsp",
            Mode::Asp => "asp",
            Mode::Ssp => "ssp",
        }
    }
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule> {
        match text {
            "average" => Ok(Rule::Average),
            "blend" => Ok(Rule::Blend),
            "sgd" => Ok(Rule::Sgd),
            other => Err(StoreError::invalid(format!(
                "unknown rule {other:?}: use 'average', 'blend' or 'sgd'"
            ))),
        }
    }

    pub fn from_u32(code: u32) -> Option<Rule> {
        [Rule::Average, Rule::Blend, Rule::Sgd].into_iter().find(|r| *r as u32 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Average => "average",
            Rule::Blend => "blend",
            Rule::Sgd => "sgd",
        }
    }
}

/// Everything needed to create a store. `Default` gives the Python defaults.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub num_params: usize,
    pub num_workers: usize,
    pub mode: Mode,
    pub rule: Rule,
    pub staleness: u32,
    /// Threads applying an update (disjoint slices of the state); `None` = automatic.
    pub apply_threads: Option<usize>,
    /// Payload slots per worker queue (>= 2, so a worker fills one while one is applied).
    pub slots: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Store name; `None` picks a unique one.
    pub name: Option<String>,
    /// Refuse a merge that would write a NaN or an infinity into the state (a
    /// non-finite payload, or a result that overflows f32). Checked on the values the
    /// merge writes, in the same pass; a refused payload is consumed without being
    /// applied and counted in its worker's `rejected`. In BSP the round is merged
    /// again from its finite payloads. See `store.rs` (`Server::apply`).
    pub reject_non_finite: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            num_params: 0,
            num_workers: 1,
            mode: Mode::Asp,
            rule: Rule::Blend,
            staleness: 0,
            apply_threads: None,
            slots: 2,
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            name: None,
            reject_non_finite: false,
        }
    }
}

impl StoreOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::invalid(m));
        if self.num_params == 0 {
            return bad("num_params=0: a store needs at least one parameter".into());
        }
        if self.num_params > (1usize << 34) {
            return bad(format!("num_params={} is too large: at most 2**34 floats", self.num_params));
        }
        if self.num_workers == 0 || self.num_workers > 4096 {
            return bad(format!("num_workers={} is out of range: use 1..=4096", self.num_workers));
        }
        match (self.mode, self.rule) {
            (Mode::Bsp, Rule::Blend) => {
                return bad("rule='blend' applies each push on arrival and needs mode='asp' or 'ssp'; \
                            with mode='bsp' use rule='average' or 'sgd'"
                    .into())
            }
            (Mode::Asp | Mode::Ssp, Rule::Average) => {
                return bad(format!(
                    "rule='average' merges a whole round and needs mode='bsp'; with mode='{}' use rule='blend' or 'sgd'",
                    self.mode.as_str()
                ))
            }
            _ => {}
        }
        if self.staleness > 0 && self.mode != Mode::Ssp {
            return bad(format!(
                "staleness={} only applies to mode='ssp' (mode is '{}'); leave it at 0",
                self.staleness,
                self.mode.as_str()
            ));
        }
        if self.slots < 2 || self.slots > MAX_SLOTS {
            return bad(format!("slots={} is out of range: use 2..={MAX_SLOTS}", self.slots));
        }
        if let Some(threads) = self.apply_threads {
            if threads == 0 || threads > 256 {
                return bad(format!("apply_threads={threads} is out of range: use 1..=256 or None"));
            }
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("lr={} must be a finite number >= 0", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(format!("momentum={} must be in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay={} must be a finite number >= 0", self.weight_decay));
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("nesterov=True needs momentum > 0".into());
        }
        if self.rule != Rule::Sgd && (self.momentum != 0.0 || self.weight_decay != 0.0 || self.nesterov) {
            return bad(format!(
                "momentum, weight_decay and nesterov apply to rule='sgd' only (rule is '{}')",
                self.rule.as_str()
            ));
        }
        Ok(())
    }

    /// Apply threads actually used: no more than there are chunks to share, so a
    /// state of one chunk is merged by the server thread alone.
    pub fn effective_apply_threads(&self) -> usize {
        let wanted = self.apply_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8)
        });
        wanted.min(self.num_params.div_ceil(CHUNK_FLOATS).max(1))
    }
}
