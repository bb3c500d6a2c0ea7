from django.urls import path, re_path

from api import account, analytics, audit, auth, fhir, forecasts, notifications, sharing, views
from api.nightscout import views as ns

v1 = [
    path("auth/token", auth.TokenObtainApi.as_view(), name="token"),
    path("auth/token/refresh", auth.TokenRefreshApi.as_view(), name="token-refresh"),
    path("auth/logout", auth.LogoutApi.as_view(), name="logout"),
    path("auth/revoke-all", auth.RevokeAllApi.as_view(), name="revoke-all"),
    path("me", account.MeAccountApi.as_view(), name="me"),
    # Patient rights and the access log (issue 6): export, account deletion (DELETE me), who accessed my data.
    path("me/export", account.MyExportApi.as_view(), name="my-export"),
    path("me/access-log", audit.MyAccessLogApi.as_view(), name="my-access-log"),
    path("me/consents", sharing.ConsentListApi.as_view(), name="my-consents"),
    path("me/consents/<int:care_team_id>", sharing.ConsentDetailApi.as_view(), name="my-consent"),
    path("me/caregivers", sharing.CaregiverListApi.as_view(), name="my-caregivers"),
    path("me/caregivers/<int:caregiver_id>", sharing.CaregiverDetailApi.as_view(), name="my-caregiver"),
    path("patients", views.PatientListApi.as_view(), name="patients"),
    path("patients/<int:patient_id>/readings", views.PatientReadingsApi.as_view(), name="patient-readings"),
    path("patients/<int:patient_id>/summary", views.PatientSummaryApi.as_view(), name="patient-summary"),
    path("patients/<int:patient_id>/treatments", views.PatientTreatmentsApi.as_view(), name="patient-treatments"),
    path("patients/<int:patient_id>/forecast", forecasts.PatientForecastApi.as_view(), name="patient-forecast"),
    path("patients/<int:patient_id>/forecasts", forecasts.PatientForecastHistoryApi.as_view(), name="patient-forecasts"),
    path("readings", views.ReadingIngestApi.as_view(), name="readings"),
    path("treatments", views.TreatmentIngestApi.as_view(), name="treatments"),
    path("patients/<int:patient_id>/metrics", analytics.PatientMetricsApi.as_view(), name="patient-metrics"),
    path("patients/<int:patient_id>/agp", analytics.PatientAgpApi.as_view(), name="patient-agp"),
    path("patients/<int:patient_id>/risk-indicators", analytics.PatientRiskIndicatorsApi.as_view(), name="patient-risk-indicators"),
    path("patients/<int:patient_id>/export.csv", analytics.PatientExportApi.as_view(), name="patient-export"),
    path("patients/<int:patient_id>/fhir/cgm-summary", fhir.PatientCgmSummaryFhirApi.as_view(), name="patient-fhir-cgm-summary"),
    path("patients/<int:patient_id>/fhir/$submit-cgm-bundle", fhir.PatientCgmBundleSubmitApi.as_view(), name="patient-fhir-submit-cgm-bundle"),
    # Notifications (issue 5): devices, preferences, inbox, acknowledgement, reminders, care-team messages.
    path("me/devices", notifications.MyDevicesApi.as_view(), name="my-devices"),
    path("me/notification-preferences", notifications.MyNotificationPreferencesApi.as_view(), name="my-notification-preferences"),
    path("me/notifications", notifications.MyNotificationsApi.as_view(), name="my-notifications"),
    path("me/notifications/<int:notification_id>/ack", notifications.MyNotificationAckApi.as_view(), name="my-notification-ack"),
    path("me/notifications/<int:notification_id>/feedback", notifications.MyNotificationFeedbackApi.as_view(), name="my-notification-feedback"),
    path("me/notifications/<int:notification_id>/receipt", notifications.MyNotificationReceiptApi.as_view(), name="my-notification-receipt"),
    path("patients/<int:patient_id>/notifications", notifications.PatientNotificationsApi.as_view(), name="patient-notifications"),
    path("patients/<int:patient_id>/messages", notifications.PatientMessagesApi.as_view(), name="patient-messages"),
    path("patients/<int:patient_id>/reminders", notifications.PatientRemindersApi.as_view(), name="patient-reminders"),
    path("patients/<int:patient_id>/reminders/<int:reminder_id>", notifications.PatientReminderApi.as_view(), name="patient-reminder"),
    path("patients/<int:patient_id>/notification-preferences", notifications.PatientNotificationPreferencesApi.as_view(), name="patient-notification-preferences"),
]

nightscout_v1 = [
    re_path(r"^entries(?:\.json)?$", ns.EntriesApi.as_view(), name="ns-entries"),
    re_path(r"^entries/sgv(?:\.json)?$", ns.EntriesSgvApi.as_view(), name="ns-entries-sgv"),
    re_path(r"^entries/current(?:\.json)?$", ns.EntriesCurrentApi.as_view(), name="ns-entries-current"),
    re_path(r"^treatments(?:\.json)?$", ns.TreatmentsApi.as_view(), name="ns-treatments"),
    re_path(r"^devicestatus(?:\.json)?$", ns.DeviceStatusApi.as_view(), name="ns-devicestatus"),
    re_path(r"^profile(?:\.json)?$", ns.ProfileApi.as_view(), name="ns-profile"),
    re_path(r"^status(?:\.json)?$", ns.StatusApi.as_view(), name="ns-status"),
    re_path(r"^verifyauth$", ns.VerifyAuthApi.as_view(), name="ns-verifyauth"),
    re_path(r"^experiments/test$", ns.ExperimentsTestApi.as_view(), name="ns-experiments-test"),
]
