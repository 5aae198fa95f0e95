//! The quantizer: calibration windows, statistics, binary factorization of
//! every decoder linear, export to a blob (and back).

pub mod align;
pub mod calib;
pub mod device_block;
pub mod export;
pub mod factor;
pub mod factor_train;
pub mod kd;
pub mod kd_device;
pub mod model_device;
pub mod pipeline;
pub mod recon;
pub mod recon_device;
pub mod stats;
pub mod stats_device;
pub mod synthetic_blob;
pub mod token_table;
pub mod workdir;
