//! The fakes services tests drive pass the contract suites of the ports they stand in for, so a
//! worker test on `FakePods` sees what it would see on the real adapters.

use domain::pod::PodSpec;
use domain::project::ProjectName;
use domain::testing::fakes::FakePods;
use domain::testing::pods::pod_manager_contract;
use domain::testing::sample_project;

#[tokio::test]
async fn fake_pods_meet_the_pod_manager_contract() {
    let project = sample_project("fake-pods", 1);
    let spec = PodSpec::from(&project);
    assert_eq!(spec.project, ProjectName::parse("fake-pods").expect("name"));
    pod_manager_contract(&FakePods::new(), &spec).await;
}

#[tokio::test]
async fn unreachable_fake_pods_answer_unavailable_until_reachable_again() {
    let pods = FakePods::new();
    let spec = PodSpec::from(&sample_project("outage", 1));
    pods.set_unreachable(true);
    use domain::ports::PodManager;
    assert!(matches!(pods.start(&spec).await, Err(domain::DomainError::Unavailable(_))));
    pods.set_unreachable(false);
    assert!(pods.start(&spec).await.expect("start").ready);
}
