//! GroupService over gRPC.

use pbjson_types::FieldMask;
use tonic::Code;
use usersvc::pb;

use crate::common::{self, spawn};

both_stores! {
async fn groups_members_and_default_groups() {
    let t = spawn().await;
    let mut groups = t.groups().await;
    let mut users = t.users().await;
    let (sup_id, sup) = t.supervisor("lead").await;
    let (early, early_token) = t.sign_up("early").await;

    // Only a supervisor manages groups.
    let e = groups
        .create_group(t.req(
            pb::CreateGroupRequest { group: Some(pb::Group { name: "x".into(), ..Default::default() }) },
            Some(&early_token),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let create = |name: &str, default: bool| pb::CreateGroupRequest {
        group: Some(pb::Group { name: name.into(), default: Some(default), ..Default::default() }),
    };
    let readers = groups.create_group(t.req(create("Read Group", false), Some(&sup))).await.unwrap().into_inner();
    assert_eq!(readers.default, Some(false));
    let everyone = groups.create_group(t.req(create("Everyone", true), Some(&sup))).await.unwrap().into_inner();

    // A user created after a default group exists joins it.
    let (late, late_token) = t.sign_up("late").await;
    let mine = users
        .list_user_groups(t.req(pb::ListUserGroupsRequest { users_id: late.clone(), ..Default::default() }, Some(&late_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.groups, vec![pb::GroupRef { groups_id: everyone.groups_id.clone(), name: "Everyone".into() }]);

    // Members come and go.
    let add = |g: &str, u: &str| pb::AddMemberRequest { groups_id: g.into(), users_id: u.into() };
    groups.add_member(t.req(add(&readers.groups_id, &early), Some(&sup))).await.unwrap();
    groups.add_member(t.req(add(&readers.groups_id, &early), Some(&sup))).await.expect("adding again changes nothing");
    groups.add_member(t.req(add(&readers.groups_id, &late), Some(&sup))).await.unwrap();
    let members = groups
        .list_members(t.req(pb::ListMembersRequest { groups_id: readers.groups_id.clone(), ..Default::default() }, Some(&sup)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.users_ids, vec![early.clone(), late.clone()]);
    groups
        .remove_member(
            t.req(
                pb::RemoveMemberRequest { groups_id: readers.groups_id.clone(), users_id: early.clone() },
                Some(&sup),
            ),
        )
        .await
        .unwrap();
    let e =
        groups
            .remove_member(t.req(
                pb::RemoveMemberRequest { groups_id: readers.groups_id.clone(), users_id: early.clone() },
                Some(&sup),
            ))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Listing, default only, and the app id check.
    let all = groups
        .list_groups(t.req(pb::ListGroupsRequest { app_id: t.app_id.to_string(), default_only: false, ..Default::default() }, Some(&sup)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.groups.len(), 2);
    let defaults = groups
        .list_groups(t.req(pb::ListGroupsRequest { app_id: String::new(), default_only: true, ..Default::default() }, Some(&sup)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(defaults.groups, vec![everyone.clone()]);
    let e = groups
        .list_groups(
            t.req(pb::ListGroupsRequest { app_id: uuid::Uuid::new_v4().to_string(), default_only: false, ..Default::default() }, Some(&sup)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Update by mask; delete.
    let renamed = groups
        .update_group(t.req(
            pb::UpdateGroupRequest {
                groups_id: readers.groups_id.clone(),
                group: Some(pb::Group { name: "Readers".into(), ..Default::default() }),
                update_mask: Some(FieldMask { paths: vec!["name".into(), "default".into()] }),
            },
            Some(&sup),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((renamed.name.as_str(), renamed.default), ("Readers", Some(false)));
    groups
        .delete_group(t.req(pb::DeleteGroupRequest { groups_id: readers.groups_id.clone() }, Some(&sup)))
        .await
        .unwrap();
    let e = groups
        .get_group(t.req(pb::GetGroupRequest { groups_id: readers.groups_id.clone() }, Some(&sup)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(t.count("SELECT count(*) FROM memberships WHERE group_id = $1", &readers.groups_id).await, 0);
    assert_eq!(t.count("SELECT count(*) FROM users WHERE id = $1", &late).await, 1, "members outlive their group");

    // Deleting a user removes their memberships.
    users.delete_user(t.req(pb::DeleteUserRequest { users_id: late.clone() }, Some(&sup))).await.unwrap();
    assert_eq!(t.count("SELECT count(*) FROM memberships WHERE user_id = $1", &late).await, 0);
    let _ = sup_id;
}
}

both_stores! {
async fn groups_of_another_application_are_invisible() {
    let t = spawn().await;
    let mut groups = t.groups().await;
    let (_, sup) = t.supervisor("mine").await;
    let (other_id, other_key) = common::new_application(&t.app).await;
    let (other_user, _) = t.sign_up_in(&other_key, "theirs").await;
    t.make_supervisor(other_id, "theirs").await;
    let their_sup = t.sign_up_in(&other_key, "theirs2").await.1;
    t.make_supervisor(other_id, "theirs2").await;
    let theirs = groups
        .create_group(common::with_auth(
            pb::CreateGroupRequest { group: Some(pb::Group { name: "Theirs".into(), ..Default::default() }) },
            Some(&other_key),
            Some(&their_sup),
        ))
        .await
        .unwrap()
        .into_inner();
    let e = groups
        .get_group(t.req(pb::GetGroupRequest { groups_id: theirs.groups_id.clone() }, Some(&sup)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mine = groups
        .create_group(t.req(
            pb::CreateGroupRequest { group: Some(pb::Group { name: "Mine".into(), ..Default::default() }) },
            Some(&sup),
        ))
        .await
        .unwrap()
        .into_inner();
    // Their user cannot be put in my group, nor mine in theirs.
    let e = groups
        .add_member(
            t.req(pb::AddMemberRequest { groups_id: mine.groups_id.clone(), users_id: other_user.clone() }, Some(&sup)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = groups
        .list_groups(t.req(pb::ListGroupsRequest { app_id: other_id.to_string(), default_only: false, ..Default::default() }, Some(&sup)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
}
