//! Where a release's tree comes from: the git mirror (`git`), Subversion (`svn`), the
//! facade over both (`vcs`), one walk for git trees and
//! directories (`tree`), the project's excludes (`exclude`) and `.gitattributes`
//! (`attributes`), builds on the controller (`build`) and the paths they keep (`build_cache`), the env layer put on a build (`layer`), builds pushed by CI made into packages (`pushed`), the packaged artifacts (`artifact`) and their deltas
//! (`delta`).

pub mod artifact;
pub mod attributes;
pub mod build;
pub mod build_cache;
pub mod delta;
pub mod exclude;
pub mod git;
pub mod layer;
pub mod manifests;
pub mod pushed;
pub mod svn;
pub mod tree;
pub mod vcs;
