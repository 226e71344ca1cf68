/*!
Transfers of entries between the local store and the bucket, shared by
`kache sync` and the daemon: planning (`plan`: what to move, from
listings and the local store), executing (`exec`: one transfer, packed
or verified and imported), the pull both run (`pull`: plan, record the
use, execute), reporting (`report`: progress, outcomes and the summary)
and the use records that `kache gc --remote` reads (`uses`).
*/

pub(crate) mod exec;
pub(crate) mod plan;
mod pull;
pub(crate) mod report;
pub(crate) mod uses;

pub(crate) use pull::{Pull, pull};
