"""Care-team pages under /care/ (server-rendered; not part of the REST API)."""

from django.contrib.auth.views import LogoutView
from django.urls import path

from glucoscope.web import otp_views, views

app_name = "web"

urlpatterns = [
    path("care/login/", views.ClinicianLoginView.as_view(), name="login"),
    path("care/logout/", LogoutView.as_view(next_page="web:login"), name="logout"),
    path("care/otp/", otp_views.otp_verify, name="otp-verify"),
    path("care/otp/enrol/", otp_views.otp_enrol, name="otp-enrol"),
    path("care/", views.dashboard, name="dashboard"),
    path("care/patients/<int:patient_id>/", views.patient_page, name="patient"),
    path("care/patients/<int:patient_id>/recent.svg", views.recent_chart, name="recent-chart"),
    path("care/patients/<int:patient_id>/agp.svg", views.agp_svg, name="agp-svg"),
    path("care/patients/<int:patient_id>/agp.pdf", views.agp_pdf, name="agp-pdf"),
    path("care/patients/<int:patient_id>/message", views.send_message, name="send-message"),
]
