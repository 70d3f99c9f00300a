//! Semantic-segmentation tables (GDD on Cityscapes): their schema, runner and picture.

mod experiment;
mod picture;
mod run;

pub use experiment::SegExperiment;
#[cfg(test)]
pub use experiment::SegMethod;
pub use run::run;
