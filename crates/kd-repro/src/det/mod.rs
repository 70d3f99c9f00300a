//! Object-detection tables (GDD on COCO-format data): their schema, evaluation, runner and
//! picture.

mod eval;
mod experiment;
mod picture;
mod run;

pub use experiment::DetExperiment;
#[cfg(test)]
pub use experiment::DetMethod;
pub use run::run;
