//! Errors of the Clone engine. Messages quote the offending input, say where it is
//! (file:line:col for YAML and templates) and what to do; a `#[source]` is never repeated.

use std::path::PathBuf;

use thiserror::Error;

/// Reading or resolving a clone configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read clone configuration {path}: check the path and its permissions")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// The I/O error underneath.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax error (or serde_yaml refused the document).
    #[error("{file}:{line}:{col}: invalid YAML: {message}")]
    Syntax {
        /// The clones.conf (or other YAML) file, as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// Parser message.
        message: String,
    },
    /// Something exceeds a limit (alias bomb, size, depth, host count).
    #[error("{file}:{line}:{col}: refused: {what}; reduce it or raise the limit in `Limits`")]
    TooLarge {
        /// The clones.conf (or other YAML) file, as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is too large.
        what: String,
    },
    /// The same key or host appears twice.
    #[error(
        "{file}:{line}:{col}: duplicate {what} (first defined at line {first}); remove one of them"
    )]
    Duplicate {
        /// The clones.conf (or other YAML) file, as given.
        file: String,
        /// Line of the second definition.
        line: usize,
        /// Column of the second definition.
        col: usize,
        /// What is duplicated, quoted.
        what: String,
        /// Line of the first definition (0 when from the API).
        first: usize,
    },
    /// A key that is not part of the format (typo of a reserved key, computed name, ...).
    #[error("{file}:{line}:{col}: unknown key `{key}`: {hint}")]
    UnknownKey {
        /// The clones.conf (or other YAML) file, as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The key as written.
        key: String,
        /// What to write instead.
        hint: String,
    },
    /// A well-formed but wrong value (bad hostname, bad range, wrong type, bad address).
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        /// The clones.conf (or other YAML) file, as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong and how to fix it, quoting the input.
        message: String,
    },
}

/// Loading, stacking or rendering template sets.
#[derive(Debug, Error)]
pub enum TemplateError {
    /// A file of a set could not be read.
    #[error("cannot read template set file {path}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// The I/O error underneath.
        #[source]
        source: std::io::Error,
    },
    /// A set named in `layers:` does not exist in any set directory.
    #[error("template set `{name}` (asked for by clone `{clone}`) is not in {searched}; add it there or fix `layers:`")]
    UnknownSet {
        /// Set name.
        name: String,
        /// Clone that asked for it.
        clone: String,
        /// Directories searched.
        searched: String,
    },
    /// A symlink, template or name that would reach outside its set or layer.
    #[error("{path}: {what} escapes its set; keep links and names inside the set")]
    Escape {
        /// Offending file.
        path: PathBuf,
        /// What escapes (quoted).
        what: String,
    },
    /// A file or set over the size limits.
    #[error("{path}: refused: {what}; shrink it or raise the limit in `Limits`")]
    TooLarge {
        /// Offending file or set.
        path: PathBuf,
        /// What is too large.
        what: String,
    },
    /// A set that contradicts itself (a file and its own whiteout, a bad whiteout name).
    #[error("{path}: {message}")]
    Invalid {
        /// Offending file.
        path: PathBuf,
        /// What contradicts what.
        message: String,
    },
    /// A template does not compile.
    #[error("template {template}:{line}:{col}: {message}")]
    Syntax {
        /// Template file.
        template: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        col: usize,
        /// Handlebars message.
        message: String,
    },
    /// A template failed to render for a clone (undefined value in strict mode, ...).
    #[error("template {template}:{line}: rendering for clone `{clone}` failed: {message}; define the value in clones.conf or fix the template")]
    Render {
        /// Template file.
        template: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// Clone being rendered.
        clone: String,
        /// Handlebars message.
        message: String,
    },
}

/// Building a clone's layer.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad template set.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A filesystem operation failed.
    #[error("clone `{clone}`: cannot {action} {path}")]
    Io {
        /// Clone being built (empty for cluster-wide work).
        clone: String,
        /// What was being done.
        action: &'static str,
        /// Path involved.
        path: PathBuf,
        /// The I/O error underneath.
        #[source]
        source: std::io::Error,
    },
    /// A `setup.d/` hook failed or timed out.
    #[error("clone `{clone}`: setup hook {hook} {status}; its stderr:\n{stderr}")]
    Hook {
        /// Clone being built.
        clone: String,
        /// Hook path.
        hook: PathBuf,
        /// Exit status or "timed out after N s".
        status: String,
        /// Captured stderr (truncated).
        stderr: String,
    },
    /// No clone of that name.
    #[error("no clone named `{0}` in the configuration; `napalmctl clones` lists them")]
    UnknownClone(String),
}
